"""The back end on Convs: BatchNormalization folded, channel spaces through per-channel ops, channels removed
across them, and the Conv forms (grouped, branches, low rank) with their permutations folded; each equal to
the model it was planned on, in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

import onnx_decomp
from conftest import make_model, op_types, run, tensor, value
from onnx_decomp_models import cnn
from onnx_decomp_passes import (CONV, BlockPlan, Branch, ConvRewrite, FoldBatchNorm, LowRankPlan, PassError,
                                RemoveUnits, SlicePlan, ZeroConvBias, feature_space, find_weighted_ops)

RTOL, ATOL = 1e-4, 1e-4


def convs(graph) -> dict:
    return {op.node.name: op for op in find_weighted_ops(graph, CONV)[0]}


def exported(graph, like):
    out = gs.export_onnx(graph)
    out.ir_version = like.ir_version
    return out


def outputs(model, x):
    return run(model, {"x": x})[0]


@pytest.fixture
def x(rng):
    return rng.standard_normal((3, cnn.C, cnn.S, cnn.S)).astype(np.float32)


def folded(model):
    graph = gs.import_onnx(model)
    FoldBatchNorm()(graph)
    return graph


def test_batchnorm_folds_into_the_conv_exactly_and_the_kernel_keeps_its_name(x):
    model = cnn.planted_cnn()
    graph = folded(model)
    out = exported(graph, model)
    assert "BatchNormalization" not in op_types(out)
    assert convs(graph)["conv1"].weight.name == "w1"
    np.testing.assert_allclose(outputs(out, x), outputs(model, x), rtol=RTOL, atol=ATOL)


def test_a_conv_without_bias_gets_a_zero_one(rng):
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], "conv")], [value("x", ["N", 3, 5, 5])],
                       [value("y", ["N", 4, 5, 5])], [tensor("w", w)])
    graph = gs.import_onnx(model)
    assert ZeroConvBias()(graph).modified
    assert not convs(graph)["conv"].bias.values.any()
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(outputs(exported(graph, model), x), outputs(model, x), rtol=RTOL, atol=ATOL)


def test_a_channel_space_runs_through_per_channel_ops_and_the_depthwise_conv():
    graph = gs.import_onnx(cnn.planted_cnn())
    ops = convs(graph)
    layers = {id(op.node): op for op in ops.values() if op.groups == 1}
    space = feature_space(ops["conv1"], layers)
    assert [c.node.name for c in space.consumers] == ["conv2"]
    assert sorted((node.op, i, axis) for node, i, axis in space.constants) == [
        ("BatchNormalization", i, 0) for i in range(1, 5)] + [("Conv", 1, 0), ("Conv", 2, 0)]
    assert [node.name for node in space.depthwise] == ["depthwise"]
    assert [(node.name, i, axis) for node, i, axis in feature_space(ops["conv2"], layers).constants] == [("scale2", 1, 0)]


def test_channels_coupled_by_a_residual_add_or_a_last_axis_constant_are_refused(rng):
    model = cnn.planted_cnn(residual=True)
    graph = gs.import_onnx(model)
    ops = convs(graph)
    layers = {id(op.node): op for op in ops.values() if op.groups == 1}
    assert "mixes the features" in feature_space(ops["conv3"], layers)
    scale = next(t for t in graph.tensors().values() if t.name == "scale")
    scale.values = scale.values.reshape(-1)  # [H] broadcasts against W, not the channels
    assert "does not broadcast per feature" in feature_space(ops["conv2"], layers)


def test_channels_are_removed_across_batchnorm_depthwise_and_the_consumer_exactly(rng, x):
    model = cnn.planted_cnn()
    kept = np.sort(rng.choice(cnn.H, 20, replace=False))
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    values = np.frombuffer(w2.raw_data, np.float32).reshape(cnn.H, cnn.H, 1, 1).copy()
    values[:, np.setdiff1d(np.arange(cnn.H), kept)] = 0.0  # what the refit leaves: removed channels unread
    w2.CopyFrom(tensor("w2", values))
    graph = gs.import_onnx(model)
    ops = convs(graph)
    RemoveUnits({ops["conv1"].site: SlicePlan(cnn.H, cnn.C * 9, rows=kept),
                 ops["conv2"].site: SlicePlan(cnn.H, cnn.H, cols=ops["conv2"].input_columns(kept))})(graph)
    out = exported(graph, model)
    shapes = {op.node.name: tuple(op.weight.shape) for op in convs(gs.import_onnx(out)).values()}
    assert shapes["conv1"] == (20, cnn.C, 3, 3) and shapes["depthwise"] == (20, 1, 3, 3) and shapes["conv2"] == (cnn.H, 20, 1, 1)
    np.testing.assert_allclose(outputs(out, x), outputs(model, x), rtol=RTOL, atol=ATOL)


def test_a_consumer_keeping_other_columns_than_the_removed_channels_is_refused():
    graph = gs.import_onnx(cnn.planted_cnn())
    ops = convs(graph)
    kept = np.arange(0, cnn.H, 2)
    with pytest.raises(PassError, match="does not drop the same units"):
        RemoveUnits({ops["conv1"].site: SlicePlan(cnn.H, cnn.C * 9, rows=kept),
                     ops["conv2"].site: SlicePlan(cnn.H, cnn.H, cols=kept + 1)})(graph)


def block_plan(model) -> BlockPlan:
    """conv2's planted blocks as a plan, read off its nonzero channel pairs."""
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    support = np.frombuffer(w2.raw_data, np.float32).reshape(cnn.H, cnn.H) != 0
    groups = {tuple(np.flatnonzero(row)) for row in support}
    return BlockPlan(cnn.H, cnn.H, tuple(Branch(np.flatnonzero(support[:, cols[0]]), cols) for cols in map(np.array, groups)))


@pytest.mark.parametrize("form, ops", [("conv_grouped", ["Conv"]), ("conv_branches", ["Slice", "Conv", "Concat"])])
def test_permuted_channel_blocks_run_as_grouped_conv_or_branches_with_the_permutations_folded(x, form, ops):
    model = cnn.planted_cnn(blocks=4)
    graph = folded(model)
    site = convs(graph)["conv2"].site
    ConvRewrite({site: block_plan(model)}, {site: form})(graph)
    out = exported(graph, model)
    assert "Gather" not in op_types(out)  # both permutations folded into conv1 and conv3
    assert set(op_types(out)) == {"Conv", "Relu", "Clip", "Mul", *ops}
    groups = [helper.get_attribute_value(a) for n in out.graph.node for a in n.attribute if a.name == "group"]
    assert groups.count(4) == (form == "conv_grouped")
    np.testing.assert_allclose(outputs(out, x), outputs(model, x), rtol=RTOL, atol=ATOL)


def test_a_permutation_that_cannot_be_folded_runs_as_a_gather(rng):
    model = cnn.planted_cnn(blocks=4)
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    mix = np.frombuffer(w2.raw_data, np.float32).reshape(cnn.H, cnn.H, 1, 1)
    alone = make_model([helper.make_node("Conv", ["x", "w2", "b2"], ["y"], "conv2")], [value("x", ["N", cnn.H, 5, 5])],
                       [value("y", ["N", cnn.H, 5, 5])], [tensor("w2", mix), tensor("b2", np.ones(cnn.H, np.float32))])
    graph = gs.import_onnx(alone)
    site = convs(graph)["conv2"].site
    ConvRewrite({site: block_plan(model)}, {site: "conv_grouped"})(graph)
    out = exported(graph, alone)
    assert op_types(out) == ["Gather", "Conv", "Gather"]
    z = rng.standard_normal((2, cnn.H, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(outputs(out, z), outputs(alone, z), rtol=RTOL, atol=ATOL)


def test_a_low_rank_kernel_runs_as_a_kxk_conv_to_r_channels_and_a_1x1_conv(rng, x):
    model = cnn.planted_cnn()
    w3 = next(t for t in model.graph.initializer if t.name == "w3")
    kernel = np.frombuffer(w3.raw_data, np.float32).reshape(cnn.C, -1)
    u, s, vt = np.linalg.svd(kernel, full_matrices=False)
    w3.CopyFrom(tensor("w3", ((u[:, :3] * s[:3]) @ vt[:3]).reshape(cnn.C, cnn.H, 3, 3).astype(np.float32)))
    graph = gs.import_onnx(model)
    site = convs(graph)["conv3"].site
    ConvRewrite({site: LowRankPlan(cnn.C, cnn.H * 9, 3)}, {site: "conv_lowrank"})(graph)
    out = exported(graph, model)
    assert op_types(out).count("Conv") == 5  # conv1, depthwise, conv2, conv3 as two
    np.testing.assert_allclose(outputs(out, x), outputs(model, x), rtol=RTOL, atol=ATOL)


def test_a_form_that_cannot_run_its_plan_is_refused():
    model = cnn.planted_cnn()
    graph = gs.import_onnx(model)
    site = convs(graph)["conv2"].site
    uneven = BlockPlan(cnn.H, cnn.H, (Branch(np.arange(8), np.arange(8)), Branch(np.arange(8, cnn.H), np.arange(8, cnn.H))))
    with pytest.raises(PassError, match="unequal channel counts"):
        ConvRewrite({site: uneven}, {site: "conv_grouped"})(graph)
    with pytest.raises(PassError, match="needs one of the forms"):
        ConvRewrite({site: uneven}, {site: "branches"})(graph)


def test_decompose_rewrites_a_conv_its_zeros_split_into_channel_blocks_and_leaves_a_dense_one(x):
    shapes = {"x": list(x.shape)}
    blocked = cnn.planted_cnn(blocks=4)
    out, report = onnx_decomp.decompose(blocked, input_shapes=shapes, gate="flops")
    assert "Conv conv2: rewritten as conv_grouped" in report.notes
    groups = [next((a.i for a in node.attribute if a.name == "group"), 1) for node in out.graph.node
              if node.op_type == "Conv"]
    assert sorted(groups) == [1, 1, 4, cnn.H]  # conv1, conv3, conv2 as 4 groups, the depthwise
    np.testing.assert_allclose(outputs(out, x), outputs(blocked, x), rtol=RTOL, atol=ATOL)
    dense = cnn.planted_cnn(blocks=1)
    out, report = onnx_decomp.decompose(dense, input_shapes=shapes, gate="flops")
    assert not [note for note in report.notes if note.startswith("Conv ")]
    assert op_types(out) == op_types(dense)
