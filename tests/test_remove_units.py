"""Two new plan kinds in the back end: hidden units removed across a feature space (``RemoveUnits``), and a
low-rank weight run as two products (the ``lowrank`` form); each equal to the dense model it was planned on,
in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from conftest import make_model, node_sites, op_types, run, tensor, value
from onnx_decomp_passes import (FORMS, BlockRewrite, LowRankPlan, PassError, RemoveUnits, SlicePlan,
                                find_weighted_ops)

D, H, OUT = 6, 10, 4
KEEP = np.array([0, 2, 3, 7, 9])


def ffn(rng, extra_outputs=()):
    """x -> Gemm(W1, b1) -> Add(c) -> Sigmoid -> MatMul(W2) -> Add(b2); W2's columns outside KEEP are zero."""
    w2 = rng.standard_normal((OUT, H)).astype(np.float32)
    w2[:, np.setdiff1d(np.arange(H), KEEP)] = 0.0
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["g"], name="up", transB=1),
             helper.make_node("Add", ["g", "c"], ["a"]), helper.make_node("Sigmoid", ["a"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["m"], name="down"), helper.make_node("Add", ["m", "b2"], ["y"])]
    inits = [tensor("W1", rng.standard_normal((H, D)).astype(np.float32)), tensor("b1", rng.standard_normal(H)),
             tensor("c", rng.standard_normal((1, H)).astype(np.float32)), tensor("W2", w2.T.copy()),
             tensor("b2", rng.standard_normal(OUT).astype(np.float32))]
    inits[1] = tensor("b1", rng.standard_normal(H).astype(np.float32))
    outputs = [value("y", ["N", OUT])] + [value(name, ["N", H]) for name in extra_outputs]
    return make_model(nodes, [value("x", ["N", D])], outputs, inits)


def rewritten(model, make_pass):
    graph = gs.import_onnx(model)
    make_pass(node_sites(graph))(graph)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out


def test_units_removed_across_producer_per_feature_ops_and_consumer_equal_the_model(rng):
    model = ffn(rng)
    out = rewritten(model, lambda sites: RemoveUnits({sites["up"]: SlicePlan(H, D, rows=KEEP),
                                                      sites["down"]: SlicePlan(OUT, H, cols=KEEP)}))
    weights = {op.node.name: op.shape for op in find_weighted_ops(gs.import_onnx(out))[0]}
    assert weights == {"up": (len(KEEP), D), "down": (OUT, len(KEEP))}
    assert op_types(out) == op_types(model)  # smaller weights, nothing else
    for batch in (0, 1, 5):
        x = rng.standard_normal((batch, D)).astype(np.float32)
        np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["graph output", "consumer keeps other units", "consumer not planned"])
def test_a_space_that_cannot_drop_the_units_is_refused(rng, case):
    model = ffn(rng, extra_outputs=["h"] if case == "graph output" else ())
    cols = {"graph output": KEEP, "consumer keeps other units": KEEP[:-1]}.get(case)

    def make(sites):
        plans = {sites["up"]: SlicePlan(H, D, rows=KEEP)}
        if cols is not None:
            plans[sites["down"]] = SlicePlan(OUT, H, cols=cols)
        return RemoveUnits(plans)

    message = "graph output" if case == "graph output" else "does not drop the same units"
    with pytest.raises(PassError, match=message):
        rewritten(model, make)


@pytest.mark.parametrize("op", ["MatMul", "Gemm", "Gemm transB alpha beta"])
def test_a_low_rank_weight_runs_as_two_products(rng, op):
    rank = 3
    w = (rng.standard_normal((12, rank)) @ rng.standard_normal((rank, 9))).astype(np.float32)  # [n_out, n_in]
    if op == "MatMul":
        node = helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")
        inits = [tensor("B", w.T.copy())]
    else:
        attrs = dict(transB=1, alpha=0.5, beta=2.0) if "transB" in op else {}
        node = helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="fc", **attrs)
        inits = [tensor("B", w if "transB" in op else w.T.copy()), tensor("C", rng.standard_normal(12).astype(np.float32))]
    model = make_model([node], [value("x", ["N", 9])], [value("y", ["N", 12])], inits)
    out = rewritten(model, lambda sites: BlockRewrite({sites["fc"]: LowRankPlan(12, 9, rank)},
                                                      chosen={sites["fc"]: FORMS["lowrank"]}))
    assert sorted(op_types(out)) == sorted(["MatMul", op.split()[0]])
    x = rng.standard_normal((5, 9)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert LowRankPlan(12, 9, rank).macs == rank * (12 + 9)
