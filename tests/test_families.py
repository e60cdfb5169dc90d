"""The families for dense-trained models on planted structure: hidden units training never used are removed
whole (units) and a weight that is low rank plus init-like noise is factorised at its spectral rank (lowrank);
each rewrite equals the masked, refitted dense model in ONNX Runtime, and the written model has the smaller
or factorised weights."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

import onnx_decomp
from conftest import make_model, op_types, run, tensor, value
from onnx_decomp import AnnealConfig, GateConfig
from onnx_decomp_passes import LowRankPlan, SlicePlan, find_weighted_ops

D, H, OUT = 16, 64, 8
FLOPS = GateConfig("flops")


def dead_units_mlp(rng, dead: int):
    """x -> Gemm(W1, b1) -> Relu -> Gemm(W2, b2): ``dead`` hidden units have init-like W1 rows and W2 columns
    at a thousandth of the live ones (training never used them)."""
    bound = 1 / np.sqrt(D)
    w1 = rng.uniform(-3, 3, (H, D)) * bound
    w2 = rng.standard_normal((OUT, H))
    w1[:dead], w2[:, :dead] = rng.uniform(-bound, bound, (dead, D)), 1e-3 * w2[:, :dead]
    return make_model([helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="up", transB=1),
                       helper.make_node("Relu", ["h"], ["r"]),
                       helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="down", transB=1)],
                      [value("x", ["N", D])], [value("y", ["N", OUT])],
                      [tensor("W1", w1.astype(np.float32)), tensor("b1", np.full(H, 0.1, np.float32)),
                       tensor("W2", w2.astype(np.float32)), tensor("b2", np.zeros(OUT, np.float32))])


def weight_shapes(model) -> dict:
    """Node -> ``(n_out, n_in)`` of every MatMul/Gemm with a constant weight."""
    return {op.node.name: op.shape for op in find_weighted_ops(gs.import_onnx(model))[0]}


def test_planted_dead_units_are_removed_whole_and_the_rewrite_equals_the_masked_model(rng):
    model = dead_units_mlp(rng, dead=H // 2)
    x = rng.standard_normal((512, D)).astype(np.float32)
    out, report = onnx_decomp.anneal(model, {"x": x}, tolerance=0.01, gate=FLOPS,
                                     config=AnnealConfig(families=("units",), bootstrap=0))
    plans = {site.node: plan for site, plan in report.plans.items()}
    assert isinstance(plans["up"], SlicePlan) and np.array_equal(plans["up"].rows, plans["down"].cols)
    assert set(plans["up"].rows.tolist()) <= set(range(H // 2, H))  # only live units are kept
    assert report.final.validation <= 0.01 and report.final.exact_ok
    kept = len(plans["up"].rows)
    assert weight_shapes(out) == {"up": (kept, D), "down": (OUT, kept)}
    assert op_types(out) == op_types(model)  # smaller weights, nothing else
    probe = rng.standard_normal((7, D)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": probe})[0], run(report.masked, {"x": probe})[0], rtol=1e-5, atol=1e-5)


def test_a_planted_low_rank_weight_is_cut_at_its_spectral_rank_and_runs_as_two_products(rng):
    n, rank = 64, 4
    bound = 1 / np.sqrt(n)  # torch-linear: the null the analysis guesses
    w = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n)) + rng.uniform(-bound, bound, (n, n)) * 1e-2
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], [value("x", ["N", n])],
                       [value("y", ["N", n])], [tensor("W", w.T.astype(np.float32))])
    x = rng.standard_normal((512, n)).astype(np.float32)
    out, report = onnx_decomp.anneal(model, {"x": x}, tolerance=0.01, gate=FLOPS,
                                     config=AnnealConfig(families=("lowrank",), bootstrap=0))
    (unit,) = report.units
    assert unit.rungs[-1] == f"rank {rank} (spectral)"  # the directions training confirmed: the last rung here
    (plan,) = report.plans.values()
    assert plan == LowRankPlan(n, n, rank)
    assert sorted(op_types(out)) == ["MatMul", "MatMul"] and report.final.exact_ok
    assert report.final.validation <= 0.01
    probe = rng.standard_normal((5, n)).astype(np.float32)
    dense = probe @ w.T.astype(np.float32)
    assert np.linalg.norm(run(out, {"x": probe})[0] - dense) <= 0.01 * np.linalg.norm(dense)


def test_the_cosine_metric_reads_only_the_outputs_named(rng):
    model = dead_units_mlp(rng, dead=H // 2)
    x = rng.standard_normal((256, D)).astype(np.float32)
    _, report = onnx_decomp.anneal(model, {"x": x}, tolerance=1e-3, gate=FLOPS,
                                   config=AnnealConfig(metric="cosine", outputs=("y",), families=("units",),
                                                       bootstrap=0))
    assert report.metric == "cosine" and report.accepted and report.final.validation <= 1e-3
