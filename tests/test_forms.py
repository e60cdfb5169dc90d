"""Every rewrite form against the dense masked model: random permutations, uneven blocks, constant rows,
dynamic batch, ranks 2-4, Gemm's variants; and the node counts each form promises."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnx
import pytest
from onnx import helper

import onnx_decomp
from conftest import hidden_blocks, make_model, node_sites, op_types, run, tensor, value
from onnx_decomp import GateConfig
from onnx_decomp_passes import FORMS, BlockPlan, BlockRewrite, Branch, PassError, plan_from_support
from onnx_decomp_passes.forms import Batched, BlockEinsum, Conv1x1

RTOL, ATOL = 1e-5, 1e-6
PADDED = {form.name: type(form)(max_padding=10.0) if form.name != "branches" else form
          for form in FORMS.values() if form.plan_type is BlockPlan}


def rewrite(model, plans, form):
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    sites = node_sites(graph)
    chosen = {sites[name]: form for name in plans}
    BlockRewrite({sites[name]: plan for name, plan in plans.items()}, chosen=chosen)(graph)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out


def matmul_model(w, rank):
    lead = ["N", "S", "T"][:rank - 1]
    return make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")],
                      [value("x", [*lead, w.shape[1]])], [value("y", [*lead, w.shape[0]])],
                      [tensor("B", w.T.copy())])


@pytest.mark.parametrize("form", sorted(PADDED))
@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("shapes", [[(4, 4)] * 4, [(3, 5), (5, 2), (4, 4)]], ids=["equal", "uneven"])
def test_form_equals_dense_masked_model(rng, form, rank, shapes):
    """Hidden permutations, two rows that read nothing and a column nobody reads; batch sizes 0, 1 and 3, and
    an empty inner dim: every size the dense model takes."""
    w, _ = hidden_blocks(rng, shapes, empty_rows=2, empty_cols=1)
    plan = plan_from_support(w != 0)
    model = matmul_model(w, rank)
    out = rewrite(model, {"fc": plan}, PADDED[form])
    for lead in dict.fromkeys(dims[:rank - 1] for dims in [(0, 2, 3), (1, 2, 3), (3, 2, 3), (2, 3, 0)]):
        x = rng.standard_normal(lead + (w.shape[1],)).astype(np.float32)
        np.testing.assert_allclose(run(out, {"x": x})[0], x @ (w * plan.mask()).T, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", ["batched", "transposed", "einsum", "conv1x1"])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta,bias", [(1.0, 1.0, None), (0.5, 2.0, "N"), (1.0, 0.5, "1xN"),
                                             (2.0, 1.0, "scalar"), (1.0, 3.0, "Mx1")])
def test_block_forms_on_gemm(rng, form, trans_b, alpha, beta, bias):
    w, _ = hidden_blocks(rng, [(3, 4), (3, 2), (2, 3)], empty_rows=1)
    n_out, n_in, m = *w.shape, 4
    shape = {None: None, "N": (n_out,), "1xN": (1, n_out), "scalar": (), "Mx1": (m, 1)}[bias]
    inputs, inits = ["a", "B"], [tensor("B", w if trans_b else w.T.copy())]
    c = None
    if shape is not None:
        c = rng.standard_normal(shape).astype(np.float32)
        inputs.append("C")
        inits.append(tensor("C", c))
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    model = make_model([node], [value("a", [m, n_in])], [value("y", [m, n_out])], inits)
    plan = plan_from_support(w != 0)
    a = rng.standard_normal((m, n_in)).astype(np.float32)

    out = rewrite(model, {"fc": plan}, PADDED[form])

    expected = alpha * a @ w.T + (0 if c is None else beta * c)
    np.testing.assert_allclose(run(out, {"a": a})[0], expected, rtol=RTOL, atol=ATOL)


def test_batched_in_order_is_one_matmul_between_reshapes_and_transposes(rng):
    w = (np.kron(np.eye(4), np.ones((8, 8))) * rng.standard_normal((32, 32))).astype(np.float32)
    model = matmul_model(w, 2)
    out = rewrite(model, {"fc": plan_from_support(w != 0)}, Batched())
    assert op_types(out) == ["Reshape", "Transpose", "MatMul", "Transpose", "Reshape"]
    x = rng.standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], x @ w.T, rtol=RTOL, atol=ATOL)


def test_hidden_permutation_costs_two_gather_elements_and_no_gather(rng):
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    out = rewrite(matmul_model(w, 2), {"fc": plan_from_support(w != 0)}, Batched())
    types = op_types(out)
    assert types.count("MatMul") == 1 and types.count("GatherElements") == 2 and "Gather" not in types


def test_padding_limit_and_rank_are_checked(rng):
    op_plan = BlockPlan(12, 12, (Branch(range(10), range(10)), Branch([10, 11], [10, 11])))
    model = matmul_model(np.eye(12, dtype=np.float32), 2)
    with pytest.raises(PassError, match="padding"):
        rewrite(model, {"fc": op_plan}, Batched())
    with pytest.raises(PassError, match="one branch"):
        rewrite(model, {"fc": BlockPlan(12, 12, (Branch(range(12), range(12)),))}, BlockEinsum())
    vector = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", [12])],
                        [value("y", [12])], [tensor("B", np.eye(12, dtype=np.float32))])
    with pytest.raises(PassError, match="rank"):
        rewrite(vector, {"fc": plan_from_support(np.eye(12, dtype=bool))}, Conv1x1())


def test_shared_weight_with_same_plan_shares_the_stacked_blocks(rng):
    w, _ = hidden_blocks(rng, [(5, 5), (5, 5)])
    nodes = [helper.make_node("MatMul", ["x", "B"], ["h"], name="a"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "B"], ["y"], name="b")]
    model = make_model(nodes, [value("x", ["N", 10])], [value("y", ["N", 10])], [tensor("B", w.T.copy())])
    plan = plan_from_support(w != 0)
    out = rewrite(model, {"a": plan, "b": plan}, Batched())
    assert sum(len(t.dims) == 3 for t in out.graph.initializer) == 1
    x = rng.standard_normal((3, 10)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", ["branches", "batched", "transposed", "einsum", "conv1x1"])
def test_decompose_reports_the_form_and_counts_its_flops(rng, form):
    w = (np.kron(np.eye(4), np.ones((8, 8))) * rng.standard_normal((32, 32))).astype(np.float32)
    model = matmul_model(w, 3)
    out, report = onnx_decomp.decompose(model, gate=GateConfig("flops", forms=(form,)),
                                        input_shapes={"x": [2, 5, 32]})
    assert report.nodes[0].form == form and report.validation.ok
    assert report.after.matmul_flops == report.before.matmul_flops // 4 == 2 * 10 * 32 * 32 // 4


@pytest.mark.parametrize("form", ["batched", "transposed", "einsum", "conv1x1"])
def test_block_forms_keep_a_weight_stored_behind_a_cast(rng, form):
    """A float16 weight cast to float32 at run time: the stacked blocks stay float16 behind their own Cast."""
    w, _ = hidden_blocks(rng, [(4, 4)] * 3, dtype=np.float16)
    nodes = [helper.make_node("Cast", ["B16"], ["B"], to=onnx.TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")]
    model = make_model(nodes, [value("x", ["N", 12])], [value("y", ["N", 12])], [tensor("B16", w.T.copy())])
    out, report = onnx_decomp.decompose(model, gate=GateConfig("flops", forms=(form,)))
    assert report.nodes[0].form == form and report.validation.ok
    assert {t.data_type for t in out.graph.initializer if len(t.dims) >= 3} == {onnx.TensorProto.FLOAT16}
    x = rng.standard_normal((3, 12)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], x @ w.astype(np.float32).T, rtol=RTOL, atol=ATOL)
