"""Models shaped the way other exporters shape them, decomposed without validation (``check=0``) so that
correctness never rests on validation catching a mistake: scopes that reuse names, names that look like
generated ones, weights that are graph inputs, weights behind a Cast, model-local functions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_decomp
from conftest import ANY_BLOCKS, hidden_blocks, make_model, op_types, run, tensor, value
from onnx_decomp import ValidationConfig
from onnx_decomp.runtime.validation import _diff
from onnx_decomp.config import Tolerance

UNCHECKED = ValidationConfig(check=0)
RTOL, ATOL = 1e-5, 1e-6


def decompose(model, **options):
    return onnx_decomp.decompose(model, gate=ANY_BLOCKS, validation=UNCHECKED, **options)


def assert_same_outputs(model, rewritten, feeds_list):
    for feeds in feeds_list:
        for a, b in zip(run(rewritten, feeds), run(model, feeds)):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def matmul_branch(name, weight=None):
    """An If branch ``x @ W``: its own initializer ``W`` when ``weight`` is given, else the outer ``W``."""
    inits = [tensor("W", weight)] if weight is not None else []
    return helper.make_graph([helper.make_node("MatMul", ["x", "W"], [f"{name}_y"], name=f"{name}_mm")], name, [],
                             [value(f"{name}_y", ["N", 8])], inits)


def test_same_named_weights_in_sibling_and_outer_scopes_keep_their_own_values(rng):
    """Both If branches define a local ``W`` shadowing the outer ``W``; onnx-graphsurgeon alone would give
    every branch the outer one."""
    weights = [hidden_blocks(rng, [(4, 4), (4, 4)])[0].T.copy() for _ in range(3)]
    node = helper.make_node("If", ["c"], ["y"], then_branch=matmul_branch("then", weights[0]),
                            else_branch=matmul_branch("else", weights[1]))
    model = make_model([node, helper.make_node("MatMul", ["x", "W"], ["z"], name="outer_mm")],
                       [value("x", ["N", 8]), value("c", [], TensorProto.BOOL)],
                       [value("y", ["N", 8]), value("z", ["N", 8])], [tensor("W", weights[2])])
    x = rng.standard_normal((3, 8)).astype(np.float32)

    rewritten, report = decompose(model)

    assert sorted(d.node for d in report.planned) == ["else_mm", "outer_mm", "then_mm"]
    assert_same_outputs(model, rewritten, [{"x": x, "c": np.array(c)} for c in (True, False)])
    assert [i.name for i in rewritten.graph.input] == ["x", "c"]


def test_existing_names_that_look_generated_are_never_replaced(rng):
    """The graph already holds ``fc/W0`` (same shape as a branch weight) and ``fc/concat``."""
    w, _ = hidden_blocks(rng, [(4, 4), (4, 4)])
    nodes = [helper.make_node("MatMul", ["x", "B"], ["fc/concat"], name="fc"),
             helper.make_node("MatMul", ["fc/concat", "fc/W0"], ["y"], name="other")]
    model = make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 4])],
                       [tensor("B", w.T.copy()), tensor("fc/W0", rng.standard_normal((8, 4)).astype(np.float32))])
    x = rng.standard_normal((2, 8)).astype(np.float32)

    rewritten, report = decompose(model)

    assert "fc" in {d.node for d in report.planned}
    assert_same_outputs(model, rewritten, [{"x": x}])
    nodes = [n.name for n in rewritten.graph.node]
    tensors = [o for n in rewritten.graph.node for o in n.output] + [t.name for t in rewritten.graph.initializer]
    assert len(nodes) == len(set(nodes)) and len(tensors) == len(set(tensors))


def duplicate_node_names(rng):
    """``relu(x @ A) @ B`` with both MatMuls named ``fc``: onnx's checker accepts it, ONNX Runtime does not."""
    a, b = (hidden_blocks(rng, [(4, 4), (4, 4)])[0].T.copy() for _ in range(2))
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "B"], ["y"], name="fc")]
    return make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 8])], [tensor("A", a), tensor("B", b)]), a, b


def test_duplicate_node_names_are_told_apart(rng):
    """Plans and reports name nodes, so the graph renames repeats; the result runs in ONNX Runtime."""
    model, a, b = duplicate_node_names(rng)
    x = rng.standard_normal((2, 8)).astype(np.float32)

    rewritten, report = decompose(model)

    assert sorted(d.node for d in report.planned) == ["fc", "fc_0"]
    assert op_types(rewritten).count("MatMul") == 4
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], np.maximum(x @ a, 0) @ b, rtol=RTOL, atol=ATOL)


def test_a_weight_that_is_also_a_graph_input_is_left_alone(rng):
    w, _ = hidden_blocks(rng, [(4, 4), (4, 4)])
    model = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="mm")],
                       [value("x", ["N", 8]), value("B", [8, 8])], [value("y", ["N", 8])], [tensor("B", w.T.copy())])
    x = rng.standard_normal((2, 8)).astype(np.float32)

    rewritten, report = decompose(model)

    assert [(n.action, n.reason) for n in report.nodes] == [
        ("skip", "weight is a graph input with a default value (overridable at run time)")]
    assert [i.name for i in rewritten.graph.input] == ["x", "B"]
    assert [t.name for t in rewritten.graph.initializer] == ["B"]
    other = rng.standard_normal((8, 8)).astype(np.float32)
    assert_same_outputs(model, rewritten, [{"x": x}, {"x": x, "B": other}])


@pytest.mark.parametrize("stored", [np.float16, np.float64])
def test_a_weight_behind_a_cast_is_rewritten_in_its_stored_type(rng, stored):
    w, blocks = hidden_blocks(rng, [(4, 3), (2, 5), (3, 3)])
    nodes = [helper.make_node("Cast", ["B16"], ["B"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "B"], ["y"], name="mm")]
    model = make_model(nodes, [value("x", ["N", 11])], [value("y", ["N", 9])], [tensor("B16", w.T.astype(stored))])
    x = rng.standard_normal((3, 11)).astype(np.float32)

    rewritten, report = decompose(model)

    assert report.planned and op_types(rewritten).count("MatMul") == blocks
    assert op_types(rewritten).count("Cast") == blocks  # the dense Cast is gone, one per branch weight
    assert {t.data_type for t in rewritten.graph.initializer if len(t.dims) == 2} == {
        helper.np_dtype_to_tensor_dtype(np.dtype(stored))}
    assert_same_outputs(model, rewritten, [{"x": x}])


def function_model(rng):
    """``y = Lin(x)`` where the model-local function ``Lin`` holds the MatMul and its weight."""
    w, blocks = hidden_blocks(rng, [(4, 4), (4, 4)])
    body = [helper.make_node("Constant", [], ["W"], value=tensor("W", w.T.copy())),
            helper.make_node("MatMul", ["a", "W"], ["b"], name="inner")]
    function = helper.make_function("local", "Lin", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Lin", ["x"], ["y"], domain="local")], "g",
                              [value("x", ["N", 8])], [value("y", ["N", 8])])
    model = helper.make_model(graph, functions=[function], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    onnx.checker.check_model(model, full_check=True)
    return model, blocks


def test_matmul_inside_a_local_function_is_reported_or_inlined(rng):
    model, blocks = function_model(rng)
    x = rng.standard_normal((2, 8)).astype(np.float32)

    kept, report = decompose(model)
    assert [(n.node, n.action, n.reason) for n in report.nodes] == [
        ("inner", "skip", "inside model-local function 'Lin' (inline it to rewrite)")]

    inlined, report = decompose(model, inline_functions=True)
    assert report.planned and op_types(inlined).count("MatMul") == blocks
    assert_same_outputs(model, inlined, [{"x": x}])
    assert_same_outputs(model, kept, [{"x": x}])


def test_every_tensor_in_external_data_even_shape_constants(tmp_path, rng):
    """``size_threshold=0`` puts a Reshape's target shape in the data file too: neither onnx's checker nor
    ONNX Runtime can read it from there, so it is read in before checking, inference and validation."""
    w, blocks = hidden_blocks(rng, [(8, 8)] * 4)
    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["x2"]),
                        helper.make_node("MatMul", ["x2", "B"], ["y"], name="mm")], [value("x", ["N", 4, 8])],
                       [value("y", ["N", 32])], [tensor("shape", np.array([-1, 32], np.int64)), tensor("B", w.T.copy())])
    path = tmp_path / "all_external.onnx"
    onnx.save_model(onnx.ModelProto.FromString(model.SerializeToString()), path,  # save_model strips its argument
                    save_as_external_data=True, location="all.data", size_threshold=0)
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)

    rewritten, report = onnx_decomp.decompose(path, gate=ANY_BLOCKS)

    assert report.validation.ok and report.after.matmul_flops * blocks == report.before.matmul_flops
    assert ["Transpose", "Gather", "Transpose"] == op_types(rewritten)[1:4]  # the rank was known: row gathers
    assert_same_outputs(model, rewritten, [{"x": x}])


def test_flops_inside_an_if_body_are_counted_after_the_rewrite(rng):
    w = np.kron(np.eye(2), np.ones((4, 4))).astype(np.float32)
    then = helper.make_graph([helper.make_node("MatMul", ["x", "B"], ["t"])], "then", [], [value("t", ["N", 8])])
    orelse = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [value("e", ["N", 8])])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=orelse)],
                       [value("x", ["N", 8]), value("c", [], TensorProto.BOOL)], [value("y", ["N", 8])],
                       [tensor("B", w)])

    _, report = decompose(model, input_shapes={"x": [3, 8]})

    assert (report.before.matmul_flops, report.after.matmul_flops) == (2 * 3 * 8 * 8, 2 * 3 * 2 * 4 * 4)


def test_nan_outputs_match_only_where_both_sides_hold_nan():
    tolerance = Tolerance()
    both = _diff("y", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), tolerance)
    one = _diff("y", np.array([np.nan, 1.0]), np.array([0.0, 1.0]), tolerance)
    assert (both.ok, both.max_abs, both.max_rel) == (True, 0.0, 0.0)
    assert not one.ok and one.max_abs == np.inf and not np.isnan(one.max_rel)
