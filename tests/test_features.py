"""Feature spaces (``passes/features.py``) through the per-feature ops exporters write: GELU as
``x * 0.5 * (1 + Erf(x / sqrt 2))`` joins the space (both operands of its Mul are in it), an op mixing the
features with other values does not; units are removed across GELU exactly."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from conftest import make_model, node_sites, run, tensor, value
from onnx_decomp_passes import RemoveUnits, SlicePlan, feature_space, find_chains, find_weighted_ops

D, H, OUT = 6, 12, 4


def erf_gelu_ffn(rng, mix: bool = False):
    """x -> MatMul(W1) -> Add(b1) -> erf GELU -> MatMul(W2); with ``mix`` the GELU's Mul reads x instead."""
    w2 = rng.standard_normal((OUT, H)).astype(np.float32)
    w2[:, ::3] = 0.0  # the units removed below contribute nothing
    other = "x_wide" if mix else "a"
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"], name="up"), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Div", ["a", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", [other, "p"], ["q"]),
             helper.make_node("Mul", ["q", "half"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"], name="down")]
    inputs = [value("x", ["N", D])] + ([value("x_wide", ["N", H])] if mix else [])
    return make_model(nodes, inputs, [value("y", ["N", OUT])],
                      [tensor("W1", rng.standard_normal((D, H)).astype(np.float32)),
                       tensor("b1", rng.standard_normal(H).astype(np.float32)),
                       tensor("root2", np.float32(np.sqrt(2))), tensor("one", np.float32(1.0)),
                       tensor("half", np.float32(0.5)), tensor("W2", w2.T.copy())])


def test_gelu_as_exporters_write_it_is_a_chain_and_units_are_removed_across_it_exactly(rng):
    model = erf_gelu_ffn(rng)
    graph = gs.import_onnx(model)
    ops, _ = find_weighted_ops(graph)
    assert [(a.node.name, b.node.name) for a, b in find_chains(ops)] == [("up", "down")]
    space = feature_space(ops[0], {id(op.node): op for op in ops})
    assert [node.op for node, _, _ in space.constants] == ["Add"]  # b1 follows the units; the scalars stay
    kept = np.setdiff1d(np.arange(H), np.arange(0, H, 3))
    sites = node_sites(graph)
    RemoveUnits({sites["up"]: SlicePlan(H, D, rows=kept), sites["down"]: SlicePlan(OUT, H, cols=kept)})(graph)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    x = rng.standard_normal((5, D)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_an_op_mixing_the_features_with_other_values_is_refused(rng):
    graph = gs.import_onnx(erf_gelu_ffn(rng, mix=True))
    ops, _ = find_weighted_ops(graph)
    reason = feature_space(ops[0], {id(op.node): op for op in ops})
    assert isinstance(reason, str) and "mixes the features with values from outside them" in reason
    assert find_chains(ops) == []
    with pytest.raises(Exception, match="mixes the features"):
        sites = node_sites(graph)
        RemoveUnits({sites["up"]: SlicePlan(H, D, rows=np.arange(6)),
                     sites["down"]: SlicePlan(OUT, H, cols=np.arange(6))})(graph)
