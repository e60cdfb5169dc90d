"""Numbers at the edges: Inf weights rewritten exactly are proven equal (inf - inf is no difference), an
empty weight is skipped with its reason, ``--json`` is standard JSON (no ``Infinity``), and weights whose
names read alike in file names keep figures of their own."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper

from conftest import hidden_blocks, make_model, tensor, value
from onnx_decomp.cli import main


def strict_json(path) -> dict:
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def matmuls(*weights, names=("W1", "W2")) -> onnx.ModelProto:
    nodes, tensors, x = [], [], "x"
    for i, (name, w) in enumerate(zip(names, weights)):
        nodes.append(helper.make_node("MatMul", [x, name], [f"h{i}"], name=f"fc{i}"))
        tensors.append(tensor(name, w))
        x = f"h{i}"
    return make_model(nodes, [value("x", ["N", weights[0].shape[0]])], [value(x, ["N", weights[-1].shape[1]])],
                      tensors)


def test_inf_weights_rewritten_exactly_are_proven_equal(tmp_path, rng, capfd):
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    w[np.nonzero(w)[0][0], np.nonzero(w)[1][0]] = np.inf
    onnx.save(matmuls(w, names=("B",)), tmp_path / "inf.onnx")
    assert main(["decompose", str(tmp_path / "inf.onnx"), str(tmp_path / "out.onnx"), "--gate", "flops"]) == 0
    out = capfd.readouterr().out
    assert "holds NaN or Inf values (kept where they are)" in out and "rewrite" in out


def test_an_empty_weight_is_skipped_with_its_reason(tmp_path, rng, capfd):
    onnx.save(matmuls(np.zeros((256, 0), np.float32), names=("E",)), tmp_path / "empty.onnx")
    for command in (["inspect"], ["analyze"], ["decompose", str(tmp_path / "out.onnx")]):
        assert main([command[0], str(tmp_path / "empty.onnx"), *command[1:]]) == 0
        assert "empty weight [256, 0]" in capfd.readouterr().out


def test_bench_json_without_matmul_flops_is_standard_json(tmp_path, capfd):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [value("x", ["N", 8])], [value("y", ["N", 8])])
    onnx.save(model, tmp_path / "relu.onnx")
    assert main(["bench", str(tmp_path / "relu.onnx"), str(tmp_path / "relu.onnx"), "--batch", "1",
                 "--budget", "0.01", "--json", str(tmp_path / "b.json")]) == 0
    results = strict_json(tmp_path / "b.json")["results"]
    assert [(r["flop_reduction"], r["efficiency"]) for r in results] == [(None, None)] * 2


def test_weights_whose_names_read_alike_keep_their_own_figures(tmp_path, rng, capfd):
    weights = [rng.uniform(-0.1, 0.1, (16, 16)).astype(np.float32) for _ in range(3)]
    onnx.save(matmuls(*weights, names=("W₁", "W₂", "w")), tmp_path / "alike.onnx")
    assert main(["analyze", str(tmp_path / "alike.onnx"), "--report", str(tmp_path / "report")]) == 0
    figures = [t["figures"] for t in strict_json(tmp_path / "report" / "report.json")["tensors"]]
    assert len({f for pair in figures for f in pair}) == 6
    assert all((tmp_path / "report" / f).is_file() for pair in figures for f in pair)
