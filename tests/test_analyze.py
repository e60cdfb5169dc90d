"""The analysis on real ONNX models: layouts, reference mode, schema, figures, scopes, grouped edges."""

from __future__ import annotations

import json
import math

import jsonschema
import matplotlib.image
import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from conftest import make_model, tensor, value
from onnx_decomp import analyze
from onnx_decomp.cli import main
from onnx_decomp.report.analysis import ANALYSIS_SCHEMA
from onnx_decomp.stats.criterion import grouped_edge_p_values

N_OUT, N_IN = 30, 7


def three_layouts(rng, bound: float) -> onnx.ModelProto:
    """The same kind of [30 x 7] weight as MatMul B[7, 30], Gemm transB=0 B[7, 30], Gemm transB=1 B[30, 7]."""
    draws = [rng.uniform(-bound, bound, (N_OUT, N_IN)).astype(np.float32) for _ in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "mm"], ["y0"], name="matmul"),
             helper.make_node("Gemm", ["x", "g0"], ["y1"], name="gemm_t0"),
             helper.make_node("Gemm", ["x", "g1"], ["y2"], name="gemm_t1", transB=1)]
    inits = [tensor("mm", draws[0].T.copy()), tensor("g0", draws[1].T.copy()), tensor("g1", draws[2])]
    return make_model(nodes, [value("x", [4, N_IN])], [value(f"y{i}", [4, N_OUT]) for i in range(3)], inits)


def test_fan_in_follows_each_layout_by_value(rng):
    """Drawn from U(+-1/sqrt(7)): nothing is confirmed only if fan_in is 7 in every layout (fan_in 30
    would put the bound at 1/sqrt(30) and call about half of the entries out of range)."""
    report = analyze(three_layouts(rng, 1 / math.sqrt(N_IN)))
    assert [t.shape for t in report.tensors] == [[N_OUT, N_IN]] * 3
    assert all(t.confirmed_density < 0.01 and t.pi0 > 0.9 for t in report.tensors)


@pytest.mark.slow
def test_report_json_validates_and_figures_are_pngs(tmp_path, rng, capfd):
    path = tmp_path / "m.onnx"
    onnx.save(three_layouts(rng, 0.4), path)
    out = tmp_path / "report"
    code = main(["analyze", str(path), "--report", str(out), "--null", "g*=xavier-uniform", "--fdr", "0.01"])
    assert code == 0, capfd.readouterr().err
    data = json.loads((out / "report.json").read_text())
    jsonschema.validate(data, ANALYSIS_SCHEMA)
    assert [t["null_source"] for t in data["tensors"]] == ["guess", "user", "user"]
    figures = [f for t in data["tensors"] for f in t["figures"]]
    assert len(figures) == 6
    for figure in figures:  # relative to the report folder
        with open(out / figure, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(out / figure).shape[0] > 100


def test_bad_null_is_exit_2_and_writes_nothing(tmp_path, rng, capfd):
    path = tmp_path / "m.onnx"
    onnx.save(three_layouts(rng, 0.4), path)
    code = main(["analyze", str(path), "--report", str(tmp_path / "r"), "--null", "uniform"])
    assert code == 2 and "unknown null model 'uniform'" in capfd.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_reference_mode_frozen_rows_stay_unconfirmed(tmp_path):
    """Train a few steps from a recorded init with rows 0-9 of the first layer frozen."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    x = torch.randn(4, 12)
    torch.onnx.export(model, (x,), tmp_path / "init.onnx", dynamo=True, external_data=False)
    model[0].weight.register_hook(lambda grad: torch.cat([torch.zeros_like(grad[:10]), grad[10:]]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data, labels = torch.randn(256, 12), torch.randint(0, 3, (256,))
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(data), labels).backward()
        optimizer.step()
    torch.onnx.export(model, (x,), tmp_path / "trained.onnx", dynamo=True, external_data=False)

    report = analyze(tmp_path / "trained.onnx", init_reference=tmp_path / "init.onnx", keep_masks=True)

    first = report.tensors[0]
    assert (first.weight, first.null, first.null_source) == ("0.weight", "reference", "user")
    confirmed = report.masks["0.weight"]
    assert not confirmed[:10].any() and confirmed[10:].mean() > 0.9


def test_model_scope_pools_the_decision(rng):
    """A weak tensor (5% of entries at p = 0.01) beside a strong one: per tensor BH rejects nothing in the
    weak one; pooled over the model, the strong tensor's discoveries lift the weak entries over the cut."""
    bound = 1 / math.sqrt(40)
    strong = rng.uniform(-1, 1, (40, 40)).astype(np.float32)
    weak = rng.uniform(-0.5 * bound, 0.5 * bound, (40, 40)).astype(np.float32)
    signal = rng.random((40, 40)) < 0.05
    weak[signal] = 0.99 * bound
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["h", "b"], ["y"])]
    model = make_model(nodes, [value("x", [2, 40])], [value("y", [2, 40])],
                       [tensor("a", strong.T.copy()), tensor("b", weak.T.copy())])
    per_tensor = analyze(model, keep_masks=True)
    pooled = analyze(model, fdr_scope="model", keep_masks=True)
    assert per_tensor.tensors[1].confirmed_density == 0
    assert (pooled.masks["b"] == signal).all()
    assert 0.8 < pooled.tensors[0].confirmed_density <= per_tensor.tensors[0].confirmed_density


def test_grouped_edges_find_a_planted_path_bundle(rng):
    d, h, d_out = 12, 40, 9
    p1, p2 = rng.random((h, d)), rng.random((d_out, h))
    p1[:, 5], p2[3, :] = 1e-4, 1e-4  # every path 5 -> k -> 3 is confirmed on both links
    p = grouped_edge_p_values(p1, p2, chunk_bytes=8 * h * d * 2)
    assert p.shape == (d_out, d)
    assert p[3, 5] < 1e-20 and np.delete(p.ravel(), 3 * d + 5).min() > 1e-6


def test_grouped_edges_on_a_model_chain(rng):
    w1, w2 = rng.uniform(-0.3, 0.3, (16, 8)), rng.uniform(-0.25, 0.25, (6, 16))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    model = make_model(nodes, [value("x", [2, 8])], [value("y", [2, 6])],
                       [tensor("w1", w1.T.astype(np.float32)), tensor("w2", w2.T.astype(np.float32))])
    report = analyze(model, edges="grouped")
    assert [(c.first, c.second, c.shape) for c in report.chains] == [("fc1", "fc2", [6, 16, 8])]
    assert report.chains[0].confirmed_density == 0
