"""A corpus of bad and unusual inputs, every one generated here (no binary blobs). For each: one line on
stderr and exit 2, nothing written (not even a staging folder), every input byte unchanged; or, where that is
right, the model passed through with the reason in the report."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import hidden_blocks, make_model, op_types, run, tensor, value
from onnx_decomp.cli import main


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def refused(tmp_path, capfd):
    """Run the CLI and check the refusal contract: exit 2, one line naming ``message``, nothing written,
    nothing read changed."""

    def check(message: str, *args):
        before = snapshot(tmp_path)
        code = main([str(a) for a in args])
        err = capfd.readouterr().err
        assert (code, err.count("\n")) == (2, 1), err
        assert message in err, err
        assert snapshot(tmp_path) == before

    return check


def blocked_model(rng, name="fc", opset=17) -> onnx.ModelProto:
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    return make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name=name)], [value("x", ["batch", 32])],
                      [value("y", ["batch", 32])], [tensor("B", w.T.copy())], opset)


@pytest.fixture
def model_path(tmp_path, rng):
    path = tmp_path / "model.onnx"
    onnx.save(blocked_model(rng), path)
    return path


@pytest.fixture
def external(tmp_path, rng):
    """A model whose weight lives in ``weights.bin``."""
    path = tmp_path / "ext.onnx"
    onnx.save_model(blocked_model(rng), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def set_external_field(path: Path, key: str, text: str) -> None:
    model = onnx.load(path, load_external_data=False)
    entries = model.graph.initializer[0].external_data
    next(e for e in entries if e.key == "location")  # the record exists
    entries.add(key=key, value=text) if key not in {e.key for e in entries} else None
    for entry in entries:
        if entry.key == key:
            entry.value = text
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("content,message", [(b"", "invalid ONNX model"),
                                             (bytes(range(256)) * 4, "not an ONNX model"),
                                             ("truncated", "ONNX model")])
def test_unreadable_files(tmp_path, model_path, refused, content, message):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(model_path.read_bytes()[:100] if content == "truncated" else content)
    refused(message, "decompose", bad, tmp_path / "out.onnx")


def test_a_folder_as_the_model(tmp_path, refused):
    (tmp_path / "folder.onnx").mkdir()
    refused("is a folder", "decompose", tmp_path / "folder.onnx", tmp_path / "out.onnx")


@pytest.mark.parametrize("key,text,message", [("offset", "-8", "bad external-data record"),
                                              ("offset", "eight", "bad external-data record"),
                                              ("length", "99999999", "truncated")])
def test_bad_external_data_records(tmp_path, external, refused, key, text, message):
    set_external_field(external, key, text)
    refused(message, "decompose", external, tmp_path / "out.onnx")


def test_missing_external_data(tmp_path, external, refused):
    (tmp_path / "weights.bin").unlink()
    refused("not found", "decompose", external, tmp_path / "out.onnx")


def test_invalid_graphs(tmp_path, rng, refused):
    w = rng.standard_normal((5, 8)).astype(np.float32)  # B must be [32, ...] for x [N, 32]
    mismatch = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "B"], ["y"])], "g", [value("x", ["N", 32])], [value("y", ["N", 8])],
        [tensor("B", w)]), opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    twice = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])], "g",
        [value("x", [2])], [value("y", [2])]), opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    for name, model in (("mismatch.onnx", mismatch), ("twice.onnx", twice)):
        (tmp_path / name).write_bytes(model.SerializeToString())
        refused("invalid ONNX model", "decompose", tmp_path / name, tmp_path / "out.onnx")


def test_duplicate_node_names_cannot_be_validated(tmp_path, rng, refused):
    from test_unusual_models import duplicate_node_names

    path = tmp_path / "twice_named.onnx"
    onnx.save(duplicate_node_names(rng)[0], path)
    refused("two nodes with same node name", "decompose", path, tmp_path / "out.onnx", "--gate", "flops")


def test_unknown_custom_domain_cannot_run(tmp_path, rng, refused):
    model = blocked_model(rng)
    model.graph.node.insert(0, helper.make_node("Mystery", ["x"], ["x2"], domain="com.example"))
    model.graph.node[1].input[0] = "x2"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    refused("ONNX Runtime cannot load the model", "decompose", path, tmp_path / "out.onnx", "--gate", "flops")


def test_paths_that_would_destroy_an_input(tmp_path, model_path, external, refused):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.zeros((2, 32), np.float32))
    refused("output path equals the input model", "decompose", model_path, model_path)
    refused("output path equals the external data of the input model", "decompose", external,
            tmp_path / "weights.bin")
    (tmp_path / "w.onnx").symlink_to(tmp_path / "weights.bin")
    refused("output path equals the external data", "decompose", external, tmp_path / "w.onnx")
    clash = tmp_path / "clash.onnx"  # its weights sit where out.onnx's external data would go
    onnx.save_model(onnx.load(external), clash, save_as_external_data=True, location="out.onnx.data",
                    size_threshold=0)
    refused("(its out.onnx.data): output path equals the external data", "decompose", clash,
            tmp_path / "out.onnx", "--save-as-external-data")
    refused("output path equals the input model", "decompose", model_path, tmp_path / "out.onnx", "--json",
            model_path)
    refused("output path equals the --inputs file", "decompose", model_path, tmp_path / "out.onnx", "--json",
            inputs, "--inputs", inputs)
    refused("written twice", "decompose", model_path, tmp_path / "out.onnx", "--json", tmp_path / "out.onnx")
    refused("output path equals the input model", "analyze", model_path, "--json", tmp_path / ".." /
            tmp_path.name / "model.onnx")


def test_outputs_that_cannot_be_written(tmp_path, model_path, refused):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    refused("is a folder, not a file", "decompose", model_path, tmp_path / "a_folder")
    refused("output folder does not exist", "decompose", model_path, tmp_path / "out.onnx", "--json",
            tmp_path / "missing" / "r.json")
    refused("is a file, not a folder", "analyze", model_path, "--report", tmp_path / "a_file")
    if os.geteuid() == 0:  # root writes through mode bits: /proc takes no new files from anyone
        read_only = Path("/proc")
    else:
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
    refused("cannot write there", "decompose", model_path, read_only / "out.onnx")


@pytest.mark.parametrize("option,text,message", [("--check", "-1", "--check must be"),
                                                 ("--rtol", "-0.1", "--rtol must be"),
                                                 ("--atol", "nan", "--atol must be"),
                                                 ("--tolerance", "inf", "--tolerance must be"),
                                                 ("--min-speedup", "nan", "--min-speedup must be"),
                                                 ("--fdr", "1.5", "--fdr must be"),
                                                 ("--gate", "fast", "invalid choice"),
                                                 ("--check", "two", "invalid int value")])
def test_option_values(tmp_path, model_path, refused, option, text, message):
    refused(message, "decompose", model_path, tmp_path / "out.onnx", option, text)


def test_inputs_and_shapes_that_do_not_fit(tmp_path, model_path, refused):
    np.save(tmp_path / "x.npy", np.zeros((2, 32), np.float32))
    refused("not an .npz archive", "decompose", model_path, tmp_path / "out.onnx", "--inputs", tmp_path / "x.npy")
    refused("cannot read input arrays", "decompose", model_path, tmp_path / "out.onnx", "--inputs",
            tmp_path / "none.npz")
    refused("dim 1 is fixed to 32 in the model, 5 given", "decompose", model_path, tmp_path / "out.onnx",
            "--input-shape", "x:3,5")
    refused("more than the", "decompose", model_path, tmp_path / "out.onnx", "--gate", "flops",
            "--input-shape", f"x:{2**40},32")


def test_random_inputs_that_break_the_model_name_the_remedy(tmp_path, rng, refused):
    w, _ = hidden_blocks(rng, [(4, 4), (4, 4)])
    model = make_model([helper.make_node("Gather", ["E", "idx"], ["g"]), helper.make_node("MatMul", ["g", "B"], ["y"])],
                       [value("idx", ["N"], TensorProto.INT64)], [value("y", ["N", 8])],
                       [tensor("E", np.ones((1, 8), np.float32)), tensor("B", w.T.copy())])
    path = tmp_path / "gather.onnx"
    onnx.save(model, path)
    refused("pass --inputs data.npz", "decompose", path, tmp_path / "out.onnx", "--gate", "flops")


def test_low_opset_and_bf16_pass_through_with_their_reason(tmp_path, rng, capfd):
    old = blocked_model(rng, opset=10)
    bf16 = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16), helper.make_node("MatMul", ["xb", "B"], ["yb"]),
         helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)], "g", [value("x", ["N", 4])], [value("y", ["N", 4])],
        [helper.make_tensor("B", TensorProto.BFLOAT16, [4, 4], np.zeros(16, np.uint16).tobytes(), raw=True)]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    for name, model, reason in (("old.onnx", old, "opset 10 < 11"), ("bf16.onnx", bf16, "bfloat16 weight")):
        path, out = tmp_path / name, tmp_path / f"out_{name}"
        onnx.save(model, path)
        assert main(["decompose", str(path), str(out), "--gate", "flops", "--check", "0"]) == 0
        assert reason in capfd.readouterr().out
        assert op_types(onnx.load(out)) == op_types(model)
    assert main(["analyze", str(tmp_path / "bf16.onnx")]) == 0
    assert "not analysed: bfloat16 weight" in capfd.readouterr().out


def test_nan_weight_analysis_writes_a_whole_report(tmp_path, rng, capfd):
    w = rng.uniform(-0.1, 0.1, (16, 16)).astype(np.float32)
    w[3, 4] = np.nan
    model = make_model([helper.make_node("MatMul", ["x", "B"], ["h"]), helper.make_node("MatMul", ["h", "C"], ["y"])],
                       [value("x", ["N", 16])], [value("y", ["N", 16])],
                       [tensor("B", w), tensor("C", np.eye(16, dtype=np.float32))])
    path = tmp_path / "nan.onnx"
    onnx.save(model, path)
    assert main(["analyze", str(path), "--report", str(tmp_path / "report")]) == 0
    assert "weight B holds NaN or Inf values: not analysed" in capfd.readouterr().out
    assert sorted(p.name for p in (tmp_path / "report" / "figures").iterdir()) == ["C_hist.png", "C_support.png"]
    assert (tmp_path / "report" / "report.json").is_file()
    assert not [p for p in tmp_path.rglob(".onnx-decomp-*")]


def test_a_successful_run_leaves_exactly_its_outputs(tmp_path, rng, capfd):
    w, _ = hidden_blocks(rng, [(32, 32)] * 2)  # blocks above the 1 KiB external-data threshold
    model_path = tmp_path / "model.onnx"
    onnx.save(make_model([helper.make_node("MatMul", ["x", "B"], ["y"])], [value("x", ["batch", 64])],
                         [value("y", ["batch", 64])], [tensor("B", w.T.copy())]), model_path)
    before = snapshot(tmp_path)
    assert main(["decompose", str(model_path), str(tmp_path / "out.onnx"), "--gate", "flops", "--json",
                 str(tmp_path / "r.json"), "--save-as-external-data"]) == 0
    added = set(snapshot(tmp_path)) - set(before)
    assert added == {Path("out.onnx"), Path("out.onnx.data"), Path("r.json")}
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(run(onnx.load(tmp_path / "out.onnx"), {"x": x})[0],
                               run(onnx.load(model_path), {"x": x})[0], rtol=1e-5, atol=1e-6)
