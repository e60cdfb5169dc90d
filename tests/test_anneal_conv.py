"""Annealing Convs on real ONNX Runtime sessions: a Conv's rows are its patches, permuted channel blocks planted
in a CNN come back and are rewritten exactly, dead channels are removed losslessly, channels coupled by a
residual Add are never split, low rank runs on Conv kernels, and int8-static composes with channel
structure."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from sklearn.metrics import adjusted_rand_score

import onnx_decomp
from conftest import make_model, op_types, run, tensor, value
from onnx_decomp.config import AnnealConfig, SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.decisions import Verdict
from onnx_decomp.search.network import Network
from onnx_decomp_models import cnn
from onnx_decomp_passes import BlockPlan, SlicePlan

FLOPS = "flops"  # forms untimed: deterministic and fast
SHAPES = {"x": [1, cnn.C, cnn.S, cnn.S]}


def anneal(model, families, tolerance=0.01, gate=FLOPS, **settings):
    return onnx_decomp.anneal(model, cnn.calibration(), tolerance=tolerance, gate=gate, input_shapes=SHAPES,
                              config=AnnealConfig(families=families, **settings))


def plans_by_node(report) -> dict:
    return {site.node: plan for site, plan in report.plans.items()}


def test_a_convs_rows_are_its_patches_and_its_macs_count_output_positions(rng):
    ctx = ModelContext.load(cnn.planted_cnn(), SHAPES)
    network = Network(ctx, SessionConfig("cpu"), max_rows=50)
    layers = {layer.node: layer for layer in network.layers}
    assert sorted(layers) == ["conv1", "conv2", "conv3"]  # the depthwise Conv is cut with its channels
    assert layers["conv1"].vectors == cnn.S * cnn.S and layers["conv1"].shape == (cnn.H, cnn.C * 9)
    x = rng.standard_normal((2, cnn.C, cnn.S, cnn.S)).astype(np.float32)
    taps = network.run([{"x": x}], taps=True).taps
    rows = taps[layers["conv3"].site]
    original = network.model_with({})
    assert rows.shape == (50, cnn.H * 9)
    # the same seeded positions, read off conv3's output: rows @ W.T + b is the Conv at those positions
    conv3 = make_model([helper.make_node("Conv", ["r", "w3", "b3"], ["y"], "conv3", pads=[1, 1, 1, 1])],
                       [value("r", [2, cnn.H, cnn.S, cnn.S])], [value("y", [2, cnn.C, cnn.S, cnn.S])],
                       [tensor(n, onnx.numpy_helper.to_array(t)) for t in original.graph.initializer
                        for n in ("w3", "b3") if t.name == n])
    r2 = run(_with_output(original, "r2"), {"x": x})[1]
    dense = np.moveaxis(run(conv3, {"r": r2})[0], 1, -1).reshape(-1, cnn.C)
    chosen = network._rows(0, len(dense), 50)
    layer = layers["conv3"]
    np.testing.assert_allclose(rows @ layer.matrix(dtype=np.float32).T + layer.bias_vector(), dense[chosen],
                               rtol=1e-4, atol=1e-4)
    depthwise = (2 * cnn.S * cnn.S) // 2 * cnn.H * 9
    assert network.dense_macs == sum(layer.dense_macs for layer in network.layers) + depthwise


def _with_output(model, name):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


@pytest.fixture(scope="module")
def blocks():
    model = cnn.planted_cnn(blocks=4)
    return model, *anneal(model, ("grouped",))


def test_permuted_channel_blocks_are_found_and_rewritten_as_a_grouped_conv_exactly(blocks):
    model, out, report = blocks
    plan = plans_by_node(report)["conv2"]
    assert isinstance(plan, BlockPlan) and len(plan.branches) == 4
    w2 = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w2").reshape(cnn.H, cnn.H)
    truth = np.array([np.flatnonzero(row)[0] for row in w2 != 0])  # a block's rows share their first input
    found = np.zeros(cnn.H, int)
    for label, branch in enumerate(plan.branches):
        found[branch.rows] = label
    assert adjusted_rand_score(truth, found) == 1.0
    assert report.final.exact_ok and report.final.validation < 1e-5
    assert [s.ari_mean for s in report.stability if s.unit == "w2"] == [1.0]
    assert any(note == "Conv conv2: rewritten as conv_grouped" for note in report.notes)
    assert "Gather" not in op_types(out)  # permutations folded into conv1 and conv3
    x = cnn.calibration(4, seed=7)["x"]
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_the_time_gate_measures_grouped_against_branches_and_never_keeps_a_slower_form(blocks):
    model, _, report = blocks
    _, timed = anneal(model, ("grouped",), gate="time")
    line = next(note for note in timed.notes if note.startswith("Conv conv2"))
    assert "conv_grouped" in line and "conv_branches" in line and "measured" in line
    speeds = {part.split()[0]: float(part.split()[1][:-1]) for part in line.split("measured ")[1].split(", ")}
    assert ("rewritten" in line) == (max(speeds.values()) >= 1.1)


def test_dead_channels_are_removed_first_and_losslessly_across_batchnorm_and_the_depthwise_conv():
    model = cnn.planted_cnn(dead=8)
    out, report = anneal(model, ("channels",), tolerance=1e-6)
    accepted = [s for s in report.steps if s.verdict is Verdict.ACCEPTED]
    assert [s.candidate.structure for s in accepted] == ["keep 75.0% of channels"] * 2
    plans = plans_by_node(report)
    assert isinstance(plans["conv1"], SlicePlan) and len(plans["conv1"].rows) == cnn.H - 8
    # conv2 lost input channels to conv1's space and output channels to its own: both held
    assert plans["conv2"].kept == (cnn.H - 8, cnn.H - 8)
    assert report.final.validation < 1e-6 and report.final.exact_ok
    shapes = {t.name: list(t.dims) for t in out.graph.initializer}
    assert [cnn.H - 8, 1, 3, 3] in shapes.values()  # the depthwise Conv lost the dead channels too
    x = cnn.calibration(4, seed=7)["x"]
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


def coupled_model(rng):
    """Two Convs whose outputs a residual Add joins, read by a third: their channels are coupled; 4 of them are
    dead in both (zero kernels, negative biases before the ReLU)."""
    def kernel(*shape, dead=0):
        values = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        values[:dead] = 0.0
        return values
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], "conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb", "bb"], ["b"], "conv_b"),
             helper.make_node("Add", ["a", "b"], ["s"], "residual"), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Conv", ["r", "wc", "bc"], ["y"], "conv_c")]
    bias = np.where(np.arange(16) < 4, -1.0, 0.0).astype(np.float32)
    inits = [tensor("wa", kernel(16, cnn.C, 3, 3, dead=4)), tensor("ba", bias),
             tensor("wb", kernel(16, cnn.C, 1, 1, dead=4)), tensor("bb", bias),
             tensor("wc", kernel(4, 16, 1, 1)), tensor("bc", np.zeros(4, np.float32))]
    return make_model(nodes, [value("x", ["N", cnn.C, cnn.S, cnn.S])], [value("y", ["N", 4, cnn.S, cnn.S])], inits)


def test_channels_coupled_by_a_residual_add_are_removed_together_or_not_at_all(rng):
    model = coupled_model(rng)
    out, report = anneal(model, ("channels",), tolerance=1e-6)
    assert [unit.weights for unit in report.units] == [["wa", "wb", "wc"]]  # one space, two producers
    plans = plans_by_node(report)
    assert list(plans["conv_a"].rows) == list(plans["conv_b"].rows) == list(range(4, 16))
    assert report.final.exact_ok and report.final.validation < 1e-6
    assert {tuple(t.dims) for t in out.graph.initializer if t.name.startswith(("conv_a", "conv_b"))} <= {
        (len(plans["conv_a"].rows), cnn.C, 3, 3), (len(plans["conv_a"].rows), cnn.C, 1, 1), (len(plans["conv_a"].rows),)}


def test_channels_added_to_a_graph_input_are_left_as_they_are(rng):
    _, report = anneal(cnn.planted_cnn(residual=True), ("channels",), tolerance=1.0)
    assert [unit.weights[0] for unit in report.units] == ["w1", "w2"]  # no unit of conv3's: x is no Conv's output


def test_low_rank_runs_on_a_conv_kernel_and_its_rewrite_equals_the_masked_model():
    out, report = anneal(cnn.planted_cnn(), ("lowrank",), tolerance=0.3)
    ranks = {node: plan.rank for node, plan in plans_by_node(report).items()}
    assert ranks and report.final.exact_ok
    assert op_types(out).count("Conv") == 4 + len(ranks)


def test_int8_static_composes_with_removed_channels():
    model = cnn.planted_cnn(dead=8)
    out, report = anneal(model, ("channels",), tolerance=0.3, quantize="int8-static")
    quantization = report.quantization
    assert quantization["scheme"] == "int8-static" and "QuantizeLinear" in op_types(out)
    assert quantization["budget"] == pytest.approx(0.3 - quantization["alone"])  # what int8 alone costs is taken off
    assert len(plans_by_node(report)["conv1"].rows) <= cnn.H - 8
    assert report.final.validation <= 0.3


def test_int8_static_composes_with_a_grouped_conv():
    out, report = anneal(cnn.planted_cnn(blocks=4), ("grouped",), tolerance=0.3, quantize="int8-static")
    groups = [helper.get_attribute_value(a) for n in out.graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group"]
    assert 4 in groups and "QuantizeLinear" in op_types(out) and "DequantizeLinear" in op_types(out)
    assert report.final.validation <= 0.3
