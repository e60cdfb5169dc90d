"""A rule, not a list: every subcommand on every input of a corpus of hostile ones (one entry or more per
class of issue 17, the classes before it in ``test_bad_inputs``) ends in exit 0, 1, 2 or 3 without a
traceback; a failure is one line on stderr and writes nothing; a success writes only what it was asked to;
no input changes by a byte; every ``--json`` written is standard JSON. Add a case here for each new class."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import hidden_blocks, make_model, tensor, value
from onnx_decomp.cli import main
from onnx_decomp.stats.null_models import REFERENCE_KEY
from test_bad_inputs import snapshot
from test_edge_numbers import matmuls
from test_old_ir import ir3_model
from test_references import with_location

COMMANDS = {
    "inspect": ["inspect", "{m}", "--json", "{o}/i.json"],
    "analyze": ["analyze", "{m}", "--json", "{o}/a.json", "--report", "{o}/report"],
    "decompose": ["decompose", "{m}", "{o}/d.onnx", "--gate", "flops", "--json", "{o}/d.json"],
    "anneal": ["anneal", "{m}", "{o}/n.onnx", "--gate", "flops", "--calib", "{c}", "--null",
               "torch-linear", "--bootstrap", "0", "--json", "{o}/n.json"],
    "shard": ["shard", "{m}", "{o}/shards", "--json", "{o}/s.json"],
    "bench": ["bench", "{m}", "{m}", "--batch", "1", "--budget", "0.01", "--json", "{o}/b.json"],
}


def blocked(rng) -> onnx.ModelProto:
    w, _ = hidden_blocks(rng, [(16, 16)] * 4)
    return matmuls(w.T.copy(), names=("B",))


def save(model: onnx.ModelProto, root):
    """``root/model/m.onnx``."""
    return write(root, model.SerializeToString())


def write(root, data: bytes):
    (root / "model").mkdir()
    (root / "model" / "m.onnx").write_bytes(data)
    return root / "model" / "m.onnx"


def with_inf(rng, value=np.inf) -> onnx.ModelProto:
    w, _ = hidden_blocks(rng, [(16, 16)] * 4)
    w[np.nonzero(w)[0][0], np.nonzero(w)[1][0]] = value
    return matmuls(w.T.copy(), names=("B",))


def outside_reference(root, rng):
    model = blocked(rng)
    onnx.save(model, root / "init.onnx")
    helper.set_model_props(model, {REFERENCE_KEY: "../init.onnx"})
    return save(model, root)


def external_weight(root, rng, location: str):
    """The blocked model with its weight in ``root/outside.bin``, recorded as ``location``."""
    path = save(blocked(rng), root)
    onnx.save_model(onnx.load(path), path, save_as_external_data=True, location="w.bin")
    os.replace(path.parent / "w.bin", root / "outside.bin")
    model = onnx.load(path, load_external_data=False)
    next(e for e in model.graph.initializer[0].external_data if e.key == "location").value = location
    path.write_bytes(model.SerializeToString())
    return path


def symlinked(root, rng):
    path = with_location(root, rng, "B", "link.bin")
    os.symlink(root / "outside.bin", path.parent / "link.bin")
    return path


def opset11_permuted(rng) -> onnx.ModelProto:
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    return make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", ["N", 32])],
                      [value("y", ["N", 32])], [tensor("B", w.T.copy())], opset=11)


MODELS = {  # name -> (root folder, rng) -> the model's path (every file it needs under root)
    "garbage": lambda root, rng: write(root, bytes(range(256)) * 4),
    "truncated": lambda root, rng: write(root, blocked(rng).SerializeToString()[:200]),
    "external-dotdot": lambda root, rng: external_weight(root, rng, "../outside.bin"),
    "external-absolute": lambda root, rng: external_weight(root, rng, str(root / "outside.bin")),
    "subgraph-external-dotdot": lambda root, rng: with_location(root, rng, "B", "../outside.bin"),
    "subgraph-external-absolute": lambda root, rng: with_location(root, rng, "C", "/etc/hostname"),
    "external-symlink": symlinked,
    "init-reference-outside": outside_reference,
    "empty-weight": lambda root, rng: save(matmuls(np.zeros((64, 0), np.float32), names=("E",)), root),
    "inf-weight": lambda root, rng: save(with_inf(rng), root),
    "nan-weight": lambda root, rng: save(with_inf(rng, np.nan), root),
    "no-matmul": lambda root, rng: save(make_model([helper.make_node("Relu", ["x"], ["y"])],
                                                   [value("x", ["N", 64])], [value("y", ["N", 64])]), root),
    "names-alike": lambda root, rng: save(matmuls(*[rng.uniform(-.1, .1, (64, 64)).astype(np.float32)] * 2,
                                                  names=("W₁", "W₂")), root),
    "ir3": lambda root, rng: save(ir3_model(hidden_blocks(rng, [(8, 8)] * 4)[0]), root),
    "opset11-permuted": lambda root, rng: save(opset11_permuted(rng), root),
}
CALIB = {  # name -> rng -> calibration input x for the 64-wide models (annealing only)
    "strings": lambda rng: np.full((40, 64), "a"),
    "nan": lambda rng: np.where(np.eye(40, 64) > 0, np.nan, rng.standard_normal((40, 64))),
    "one-sample": lambda rng: np.repeat(rng.standard_normal((1, 64)), 40, axis=0),
}


def run_and_check(tmp_path, command: str, model, calib, capfd) -> int:
    """Run one command (module rule) and check the contract; returns its exit code."""
    out = tmp_path / "out"
    args = [a.format(m=model, o=out, c=calib) for a in COMMANDS[command]]
    before = snapshot(tmp_path)
    out.mkdir()
    code = main(args)
    captured = capfd.readouterr()
    assert code in (0, 1, 2, 3) and "Traceback" not in captured.err, captured.err
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.parts[0] != "out"} == before, "an input changed"
    written = {p.relative_to(out) for p in out.rglob("*")}
    if code != 0:
        assert (captured.err.count("\n"), written) == (1, set()), captured.err
    asked = {a.split("/")[-1] for a in args if a.startswith(str(out))}
    assert {p.parts[0] for p in written} <= asked | {f"{name}.data" for name in asked}, written
    for path in out.glob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda constant: pytest.fail(f"{path.name}: {constant}"))
    return code


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", MODELS)
def test_every_command_keeps_the_contract_on_hostile_models(tmp_path, rng, capfd, case, command):
    model = MODELS[case](tmp_path, rng)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((40, 64)).astype(np.float32))
    run_and_check(tmp_path, command, model, tmp_path / "calib.npz", capfd)


@pytest.mark.parametrize("case", CALIB)
def test_annealing_keeps_the_contract_on_hostile_data(tmp_path, rng, capfd, case):
    model = save(blocked(rng), tmp_path)
    np.savez(tmp_path / "calib.npz", x=CALIB[case](rng))
    assert run_and_check(tmp_path, "anneal", model, tmp_path / "calib.npz", capfd) == 2
