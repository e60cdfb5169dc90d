"""What a model may reference (``io.references``): files inside its own folder. A location that is absolute,
climbs out with ``..`` or is a symlink pointing outside is refused by every command with one line, for any
tensor (a weight, a bias, a tensor inside an If branch) and for the init reference recorded in metadata."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper

from conftest import hidden_blocks, make_model, tensor, value
from onnx_decomp.cli import main
from onnx_decomp.errors import InvalidModelError
from onnx_decomp.stats.null_models import REFERENCE_KEY
from test_bad_inputs import refused, snapshot  # noqa: F401 (fixtures)

COMMANDS = {"inspect": ["inspect", "{m}"], "analyze": ["analyze", "{m}"],
            "decompose": ["decompose", "{m}", "{o}", "--gate", "flops"],
            "anneal": ["anneal", "{m}", "{o}", "--calib", "{c}", "--gate", "flops"], "shard": ["shard", "{m}", "{o}"],
            "bench": ["bench", "{m}", "{m}", "--budget", "0.01", "--batch", "1"]}


def gemm_in_if(rng) -> onnx.ModelProto:
    """``y = Gemm(x, B, C)`` inside an If branch (B 64 x 64, above the small-tensor size read in at load)."""
    w, _ = hidden_blocks(rng, [(16, 16)] * 4)
    branch = helper.make_graph([helper.make_node("Gemm", ["x", "B", "C"], ["t"], name="fc")], "then", [],
                               [value("t", ["N", 64])], [tensor("B", w.T.copy()), tensor("C", np.ones(64, np.float32))])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [value("e", ["N", 64])])
    return make_model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)],
                      [value("x", ["N", 64]), value("c", [], TensorProto.BOOL)], [value("y", ["N", 64])])


def with_location(tmp_path, rng, tensor_name: str, location: str):
    """The If model as ``model/m.onnx``, its branch's tensors in ``model/w.bin`` (onnx's saver leaves
    subgraph initializers inline), ``tensor_name``'s record pointing at ``location``; a copy of ``w.bin``
    lies outside the model's folder as ``outside.bin``."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = gemm_in_if(rng)
    data = b""
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    for t in then.initializer:
        external_data_helper.set_external_data(t, location if t.name == tensor_name else "w.bin", len(data),
                                               len(t.raw_data))
        data += t.raw_data
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
    (folder / "w.bin").write_bytes(data)
    (tmp_path / "outside.bin").write_bytes(data)
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    return folder / "m.onnx"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("tensor_name,location", [("B", "../outside.bin"), ("C", "{abs}"), ("B", "link.bin")])
def test_locations_outside_the_models_folder_are_refused(tmp_path, rng, refused, command, tensor_name, location):
    path = with_location(tmp_path, rng, tensor_name, location.format(abs=tmp_path / "outside.bin"))
    os.symlink(tmp_path / "outside.bin", path.parent / "link.bin")
    np.savez(tmp_path / "calib.npz", x=np.ones((8, 64), np.float32))
    args = [a.format(m=path, o=tmp_path / "out.onnx", c=tmp_path / "calib.npz") for a in COMMANDS[command]]
    refused("lies outside the model's folder", *args)


def test_files_in_subfolders_are_read(tmp_path, rng, capfd):
    w, _ = hidden_blocks(rng, [(16, 16)] * 4)
    model = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", ["N", 64])],
                       [value("y", ["N", 64])], [tensor("B", w)])
    (tmp_path / "inner").mkdir()
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, location="inner/w.bin")
    assert main(["decompose", str(tmp_path / "m.onnx"), str(tmp_path / "out.onnx"), "--gate", "flops"]) == 0
    assert "fc " in capfd.readouterr().out


def test_a_recorded_init_reference_outside_the_folder_is_refused(tmp_path, rng, refused):
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    model = make_model([helper.make_node("MatMul", ["x", "B"], ["y"])], [value("x", ["N", 32])],
                       [value("y", ["N", 32])], [tensor("B", w)])
    onnx.save(model, tmp_path / "init.onnx")
    (tmp_path / "model").mkdir()
    helper.set_model_props(model, {REFERENCE_KEY: "../init.onnx"})
    onnx.save(model, tmp_path / "model" / "m.onnx")
    refused("metadata onnx_decomp.init_reference '../init.onnx' lies outside", "analyze", tmp_path / "model" / "m.onnx")


def test_the_exporter_records_only_a_reference_inside_the_models_folder(tmp_path):
    import torch

    from onnx_decomp.torch import export, record_init

    layer = torch.nn.Linear(4, 4)
    with pytest.raises(InvalidModelError, match="lies outside the model's folder"):
        export(layer, torch.ones(2, 4), tmp_path / "model" / "m.onnx", record_init(layer),
               reference_path=tmp_path / "init.onnx")
    assert list(tmp_path.iterdir()) == []
