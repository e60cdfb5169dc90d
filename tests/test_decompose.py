"""Exact decomposition end to end: build a model, run ONNX Runtime, decompose, run again, compare."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_decomp
from conftest import ANY_BLOCKS, hidden_blocks, make_model, op_types, run, tensor, value
from onnx_decomp import GateConfig

RTOL, ATOL = 1e-5, 1e-6


def matmul_model(w, batch_shape=("N",), opset=17):
    """y = x @ W.T as MatMul(x, B) with B = W.T [n_in, n_out]."""
    n_out, n_in = w.shape
    return make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="mm")],
                      [value("x", [*batch_shape, n_in])], [value("y", [*batch_shape, n_out])],
                      [tensor("B", w.T.copy())], opset)


def count(model, op):
    return op_types(model).count(op)


@pytest.mark.parametrize("seed", range(6))
def test_hidden_block_diagonal_matmul_is_recovered_exactly(seed):
    rng = np.random.default_rng(seed)
    n_blocks = int(rng.integers(2, 7))
    shapes = [(int(rng.integers(1, 12)), int(rng.integers(1, 12))) for _ in range(n_blocks)]
    w, blocks = hidden_blocks(rng, shapes, empty_rows=int(rng.integers(0, 3)),
                              empty_cols=int(rng.integers(0, 3)))
    model = matmul_model(w, batch_shape=("batch", "seq"))
    x = rng.standard_normal((3, 5, w.shape[1])).astype(np.float32)

    out, report = onnx_decomp.decompose(model, gate=ANY_BLOCKS)

    assert count(out, "MatMul") == blocks
    assert report.nodes[0].blocks == blocks
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)
    assert report.validation.ok and report.validation.device == "cpu"


def test_dynamic_dims_stay_dynamic(rng):
    w, _ = hidden_blocks(rng, [(4, 3), (5, 6)])
    out, _ = onnx_decomp.decompose(matmul_model(w, batch_shape=("batch", "seq")), gate="flops")
    dims = out.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"]
    for batch in (1, 7):
        x = rng.standard_normal((batch, 2, 9)).astype(np.float32)
        assert run(out, {"x": x})[0].shape == (batch, 2, 9)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("bias_shape", [None, "N", "1xN", "scalar", "Mx1"])
def test_gemm_variants(rng, trans_b, alpha, beta, bias_shape):
    w, blocks = hidden_blocks(rng, [(3, 4), (5, 2), (2, 3)], empty_rows=2)
    n_out, n_in, m = *w.shape, 4
    bias = {None: None, "N": (n_out,), "1xN": (1, n_out), "scalar": (), "Mx1": (m, 1)}[bias_shape]
    inputs = ["a", "B"] + (["C"] if bias is not None else [])
    inits = [tensor("B", w if trans_b else w.T.copy())]
    if bias is not None:
        inits.append(tensor("C", rng.standard_normal(bias).astype(np.float32)))
    node = helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha, beta=beta)
    model = make_model([node], [value("a", [m, n_in])], [value("y", [m, n_out])], inits)
    a = rng.standard_normal((m, n_in)).astype(np.float32)

    out, report = onnx_decomp.decompose(model, gate=ANY_BLOCKS)

    assert count(out, "Gemm") == blocks and report.planned
    np.testing.assert_allclose(run(out, {"a": a})[0], run(model, {"a": a})[0], rtol=RTOL, atol=ATOL)


def test_weight_from_constant_node(rng):
    w, blocks = hidden_blocks(rng, [(3, 3), (3, 3)])
    nodes = [helper.make_node("Constant", [], ["B"], value=tensor("B", w.T.copy())),
             helper.make_node("MatMul", ["x", "B"], ["y"])]
    model = make_model(nodes, [value("x", ["N", 6])], [value("y", ["N", 6])])
    x = rng.standard_normal((2, 6)).astype(np.float32)

    out, _ = onnx_decomp.decompose(model, gate=ANY_BLOCKS)

    assert "Constant" not in op_types(out) and count(out, "MatMul") == blocks
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_weight_inside_if_branch_from_outer_scope(rng):
    w, blocks = hidden_blocks(rng, [(4, 4), (2, 2)])
    then_graph = helper.make_graph([helper.make_node("MatMul", ["x", "B"], ["t"])], "then", [],
                                   [value("t", ["N", 6])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                   [value("e", ["N", 6])])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)],
                       [value("x", ["N", 6]), value("c", [], TensorProto.BOOL)], [value("y", ["N", 6])],
                       [tensor("B", w.T.copy())])
    x = rng.standard_normal((3, 6)).astype(np.float32)

    out, report = onnx_decomp.decompose(model, gate=ANY_BLOCKS)

    branch = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node].count("MatMul") == blocks
    assert report.nodes[0].graph == "then"
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=RTOL, atol=ATOL)


def test_shared_initializer_is_rewritten_at_each_use_without_copies(rng):
    w, blocks = hidden_blocks(rng, [(5, 5), (5, 5)])
    nodes = [helper.make_node("MatMul", ["x", "B"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "B"], ["y"])]
    model = make_model(nodes, [value("x", ["N", 10])], [value("y", ["N", 10])], [tensor("B", w.T.copy())])
    x = rng.standard_normal((4, 10)).astype(np.float32)

    out, _ = onnx_decomp.decompose(model, gate=ANY_BLOCKS)

    assert count(out, "MatMul") == 2 * blocks
    branch_weights = [t for t in out.graph.initializer if t.dims and len(t.dims) == 2]
    assert len(branch_weights) == blocks  # both uses share the same block initializers
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("opset", [11, 12, 13, 18])
def test_opsets(rng, opset):
    w, blocks = hidden_blocks(rng, [(3, 2), (2, 3)], empty_rows=1)
    model = matmul_model(w, opset=opset)
    x = rng.standard_normal((2, w.shape[1])).astype(np.float32)
    out, _ = onnx_decomp.decompose(model, gate=ANY_BLOCKS)
    assert out.opset_import[0].version == opset and count(out, "MatMul") == blocks
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_dense_model_reports_no_structure_and_stays_equivalent(rng):
    model = matmul_model(rng.standard_normal((8, 8)).astype(np.float32))
    x = rng.standard_normal((2, 8)).astype(np.float32)
    out, report = onnx_decomp.decompose(model, gate="flops")
    assert not report.planned and report.nodes[0].action == "keep"
    assert report.nodes[0].reason == "dense: one block"
    assert op_types(out) == ["MatMul"]
    np.testing.assert_array_equal(run(out, {"x": x})[0], run(model, {"x": x})[0])


def test_cost_gate_keeps_nodes_below_threshold(rng):
    w, _ = hidden_blocks(rng, [(6, 6), (2, 2)])  # 40 of 64 MACs: 1.6x fewer
    _, report = onnx_decomp.decompose(matmul_model(w), gate=GateConfig("flops", min_flop_reduction=2.0))
    assert report.nodes[0].action == "keep" and "1.60x" in report.nodes[0].reason


def test_unsupported_weights_are_listed_with_reasons(rng):
    nodes = [helper.make_node("Gemm", ["a", "B"], ["y"], transA=1),
             helper.make_node("MatMul", ["x", "I"], ["z"])]
    model = make_model(nodes, [value("a", [3, 2]), value("x", [2, 3], TensorProto.INT32)],
                       [value("y", [2, 4]), value("z", [2, 3], TensorProto.INT32)],
                       [tensor("B", np.eye(3, 4, dtype=np.float32)), tensor("I", np.eye(3, dtype=np.int32))])
    _, report = onnx_decomp.decompose(model, gate="flops")
    reasons = {n.node: (n.action, n.reason) for n in report.nodes}
    assert reasons["Gemm"] == ("skip", "Gemm with transA=1")
    assert reasons["MatMul"][0] == "skip" and "int32 weight" in reasons["MatMul"][1]


def test_timing_gate_keeps_a_slower_rewrite_dense(rng):
    """16x16 in two scattered blocks at batch 1: the extra nodes cost more than 2x fewer MACs save."""
    w, _ = hidden_blocks(rng, [(8, 8), (8, 8)])
    model = matmul_model(w)
    out, report = onnx_decomp.decompose(model, input_shapes={"x": [1, 16]})
    node = report.nodes[0]
    assert node.action == "keep" and node.reason.startswith("measured") and node.speedup < 1.1
    assert op_types(out) == ["MatMul"]


def test_timing_gate_rewrites_a_faster_node(rng):
    """1024x1024 in 8 contiguous blocks at batch 64: measured 3-5x faster (tools/bench_forms.py)."""
    w = (np.kron(np.eye(8), np.ones((128, 128))) * rng.standard_normal((1024, 1024))).astype(np.float32)
    model = matmul_model(w)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    out, report = onnx_decomp.decompose(model, input_shapes={"x": [64, 1024]}, gate=GateConfig(forms=("branches",)))
    node = report.nodes[0]
    assert node.action == "rewrite" and node.speedup >= 1.1
    assert count(out, "MatMul") == 8
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
