"""Models of IR version 3, where every initializer is also listed as a graph input (ONNX Runtime holds them
constant): what needs no rewrite comes out byte for byte as it went in, and a rewrite keeps the convention
(every initializer listed as an input), so the result passes onnx.checker and computes the same."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_decomp
from conftest import hidden_blocks, make_model, run, tensor, value
from onnx_decomp import GateConfig
from onnx_decomp.cli import main


def ir3_model(weight: np.ndarray) -> onnx.ModelProto:
    """``(x + Constant) @ B`` at IR 3, opset 11, ``B`` listed as an input as that IR requires."""
    nodes = [helper.make_node("Constant", [], ["c"], value=tensor("c", np.ones(32, np.float32))),
             helper.make_node("Add", ["x", "c"], ["h"]), helper.make_node("MatMul", ["h", "B"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [value("x", ["N", 32]), value("B", [32, 32])], [value("y", ["N", 32])],
                              [tensor("B", weight)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("gate", ["flops", "time"])
def test_what_needs_no_rewrite_comes_out_as_it_went_in(tmp_path, rng, gate):
    onnx.save(ir3_model(rng.standard_normal((32, 32)).astype(np.float32)), tmp_path / "dense.onnx")
    assert main(["decompose", str(tmp_path / "dense.onnx"), str(tmp_path / "out.onnx"), "--gate", gate]) == 0
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "dense.onnx").read_bytes()


def test_a_rewrite_keeps_every_initializer_listed_as_an_input(tmp_path, rng, capfd):
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    model = ir3_model(w)
    onnx.save(model, tmp_path / "blocked.onnx")
    assert main(["decompose", str(tmp_path / "blocked.onnx"), str(tmp_path / "out.onnx"), "--gate", "flops"]) == 0
    assert "rewrite" in capfd.readouterr().out
    out = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version == 3 and {t.name for t in out.graph.initializer} <= {i.name for i in out.graph.input}
    for batch in (0, 1, 3):
        x = rng.standard_normal((batch, 32)).astype(np.float32)
        np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_weights_an_old_model_lists_as_inputs_are_rewritten(rng):
    """At IR 3 the listing says nothing about overriding (ONNX Runtime holds such initializers constant): the
    weight is rewritten like any other, a quarter of the dense FLOPs for four blocks."""
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    _, report = onnx_decomp.decompose(ir3_model(w), gate=GateConfig("flops", forms=("branches",)))
    assert report.after.matmul_flops == report.before.matmul_flops // 4 > 0


def test_permuted_blocks_below_opset_13_are_planned(rng):
    """Below opset 13 shape inference cannot follow Shape -> Slice -> Concat, so the cost model meets dims it
    does not know (a GatherElements' rows): it estimates, where it used to fail."""
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    model = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", ["N", 32])],
                       [value("y", ["N", 32])], [tensor("B", w.T.copy())], opset=11)
    _, report = onnx_decomp.decompose(model, gate=GateConfig("cost", forms=("branches", "batched")))
    assert report.validation.ok and report.nodes[0].estimated is not None
