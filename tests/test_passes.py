"""The compiler back end alone: plans from supports, and the rewrite pass driven by an explicit plan."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from conftest import make_model, node_sites, op_types, run, tensor, value
from onnx_decomp_passes import (BlockPlan, BlockRewrite, Branch, PassError, PassManager, Site, UniqueNodeNames,
                                plan_from_support)


def test_plan_from_support_components_constant_rows_and_unused_cols():
    support = np.zeros((5, 6), bool)
    support[0, 1] = support[3, 1] = True  # rows 0, 3 share column 1
    support[3, 4] = True
    support[2, [0, 5]] = True
    plan = plan_from_support(support)
    assert [(b.rows.tolist(), b.cols.tolist()) for b in plan.branches] == [([0, 3], [1, 4]), ([2], [0, 5])]
    assert plan.constant_rows.tolist() == [1, 4] and plan.unused_cols.tolist() == [2, 3]
    assert plan.macs == 2 * 2 + 1 * 2 and plan.dense_macs == 30
    assert plan.mask()[support].all() and plan.mask().sum() == plan.macs


def test_plan_invariants_are_enforced():
    with pytest.raises(ValueError, match="exactly once"):
        BlockPlan(3, 2, (Branch([0, 1], [0]), Branch([1], [1])), [2])
    with pytest.raises(ValueError, match="exactly once"):
        BlockPlan(3, 2, (Branch([0], [0]),), [])
    with pytest.raises(ValueError, match="columns must lie"):
        BlockPlan(1, 2, (Branch([0], [2]),))


def _graph(w, rng, known_rank=True):
    """MatMul "fc" on x; without ``known_rank`` it reads an Identity output that carries no shape."""
    source = "x" if known_rank else "h"
    nodes = [helper.make_node("Identity", ["x"], ["h"])] if not known_rank else []
    nodes.append(helper.make_node("MatMul", [source, "B"], ["y"], name="fc"))
    model = make_model(nodes, [value("x", ["N", w.shape[1]])], [value("y", ["N", w.shape[0]])],
                       [tensor("B", w.T.copy())])
    return model, gs.import_onnx(model)


@pytest.mark.parametrize("known_rank,permute_ops", [(True, ["Transpose", "Gather", "Transpose"]),
                                                     (False, ["Gather"])])
def test_explicit_overlapping_plan_is_the_mask(rng, known_rank, permute_ops):
    """General block-sparse plan: branches read overlapping inputs; entries outside the plan are dropped.
    Permutations take the row-gather form when the rank is known, a last-axis Gather otherwise."""
    w = rng.standard_normal((4, 5)).astype(np.float32)
    plan = BlockPlan(4, 5, (Branch([0, 2], [0, 1, 2]), Branch([1], [2, 3, 4])), constant_rows=[3])
    model, graph = _graph(w, rng, known_rank)

    result = PassManager([UniqueNodeNames(), BlockRewrite({node_sites(graph)["fc"]: plan})])(graph)

    assert result.modified
    out = gs.export_onnx(result.graph)
    out.ir_version = model.ir_version
    assert op_types(out).count("MatMul") == 2 and "Expand" in op_types(out)
    assert op_types(out)[-len(permute_ops):] == permute_ops  # the unpermute restoring output order
    x = rng.standard_normal((3, 5)).astype(np.float32)
    expected = x @ (w * plan.mask()).T
    np.testing.assert_allclose(run(out, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)


def test_plan_for_unknown_node_or_wrong_shape_is_refused(rng):
    w = rng.standard_normal((4, 4)).astype(np.float32)
    _, graph = _graph(w, rng)
    with pytest.raises(PassError, match="not rewritable"):
        BlockRewrite({Site(graph.name, "nope", "B"): plan_from_support(np.eye(4, dtype=bool))})(graph)
    with pytest.raises(PassError, match="plan is 3x3"):
        BlockRewrite({node_sites(graph)["fc"]: plan_from_support(np.eye(3, dtype=bool))})(graph)


def test_rewrite_needs_opset_11(rng):
    w = np.eye(4, dtype=np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")],
                       [value("x", ["N", 4])], [value("y", ["N", 4])], [tensor("B", w)], opset=10)
    with pytest.raises(PassError, match="opset >= 11"):
        graph = gs.import_onnx(model)
        BlockRewrite({node_sites(graph)["fc"]: plan_from_support(w != 0)})(graph)


def test_unique_node_names():
    model = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="r"),
                        helper.make_node("Relu", ["b"], ["y"], name="r")], [value("x", [2])], [value("y", [2])])
    graph = gs.import_onnx(model)
    assert UniqueNodeNames()(graph).modified
    assert [n.name for n in graph.nodes] == ["Relu", "r", "r_0"]


def test_pass_manager_names_the_failing_pass_and_those_before_it_and_keeps_the_cause(rng):
    w = rng.standard_normal((4, 4)).astype(np.float32)
    _, graph = _graph(w, rng)
    wrong = plan_from_support(np.eye(3, dtype=bool))
    with pytest.raises(PassError, match=r"^BlockRewrite: fc: plan is 3x3.*\(after UniqueNodeNames\)$") as raised:
        PassManager([UniqueNodeNames(), BlockRewrite({node_sites(graph)["fc"]: wrong})])(graph)
    assert isinstance(raised.value.__cause__, PassError)


def test_checked_after_every_pass(rng):
    w = rng.standard_normal((4, 4)).astype(np.float32)
    _, graph = _graph(w, rng)
    seen = []
    result = PassManager([UniqueNodeNames(), UniqueNodeNames()], check=lambda g: seen.append(len(g.nodes)))(graph)
    assert seen == [len(graph.nodes)] * 2 and list(result.artifact.by_pass) == ["UniqueNodeNames"]
