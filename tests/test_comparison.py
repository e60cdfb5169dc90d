"""The rules both benchmark pipelines share (``onnx_decomp_models.comparison``): budgets after annealing, low
rank at one share within a budget, pruning widths, the whitened peer, MAC counts of float and quantized
models, the frontier, the manifest and the table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnx_decomp.runtime.quantize import quantize
from onnx_decomp_models import comparison
from onnx_decomp_models.comparison import Entry, Manifest, Point
from onnx_decomp_passes import LowRankPlan, SlicePlan


def test_ours_budget_is_the_dense_count_less_what_every_plan_saves():
    plans = {"a": LowRankPlan(64, 32, 8), "b": SlicePlan(128, 64, rows=np.arange(32)), "c": SlicePlan(64, 128, cols=np.arange(32))}
    saved = (64 * 32 - 8 * 96) + (128 * 64 - 32 * 64) + (64 * 128 - 64 * 32)
    assert comparison.budget_after(plans, 100_000) == 100_000 - saved


def test_uniform_ranks_take_one_share_of_every_layer_within_the_budget():
    shapes = {"q": (64, 64), "up": (256, 64), "down": (64, 256)}
    dense = sum(o * i for o, i in shapes.values())
    for share in (0.2, 0.5, 0.9):
        ranks = comparison.uniform_ranks(shapes, share * dense)
        cost = sum(r * sum(shapes[n]) for n, r in ranks.items())
        assert cost <= share * dense
        shares = [r * sum(shapes[n]) / (shapes[n][0] * shapes[n][1]) for n, r in ranks.items()]
        assert max(shares) - min(shares) < 0.1  # one share, up to rounding to whole ranks
        bigger = {n: r + 1 for n, r in ranks.items()}
        assert sum(r * sum(shapes[n]) for n, r in bigger.items()) > share * dense
    assert set(comparison.uniform_ranks(shapes, 0).values()) == {1}


def test_ranks_within_leave_the_other_layers_their_macs():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64), torch.nn.Linear(64, 10))
    layers = {"0": (256, 64), "1": (64, 256)}
    ranks = comparison.ranks_within(model, layers, 20_000)
    assert 640 + sum(r * 320 for r in ranks.values()) <= 20_000 < 640 + sum((r + 1) * 320 for r in ranks.values())


def test_pruning_widths_keep_the_heads_share_then_fill_the_budget_with_units():
    d, heads, head_dim, width, layers = 256, 8, 32, 1024, 4
    full = layers * (4 * d * d + 2 * d * width)
    kept_heads, kept_units = comparison.pruned_widths(d, heads, head_dim, width, layers, full / 2)
    assert kept_heads == 4
    assert layers * (4 * d * head_dim * kept_heads + 2 * d * kept_units) <= full / 2
    assert layers * (4 * d * head_dim * kept_heads + 2 * d * (kept_units + 1)) > full / 2
    assert comparison.pruned_widths(d, heads, head_dim, width, layers, full) == (heads, width)


def test_a_peer_is_covered_only_by_ours_as_fast_and_as_good():
    ours = [Point("ours a", 1.5, 0.60), Point("ours b", 2.0, 0.55)]
    peers = [Point("p covered", 1.4, 0.59), Point("p tie", 2.0, 0.55), Point("p better", 1.8, 0.58),
             Point("p fastest", 3.0, 0.40)]
    losses = comparison.uncovered(peers, ours)
    assert [(p.name, b.name if b else None) for p, b in losses] == [("p better", "ours b"), ("p fastest", None)]


def _linear_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal((32, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_macs_count_float_and_int8_products_alike():
    model, feeds = _linear_model(), {"x": np.ones((1, 5, 16), np.float32)}
    assert comparison.matmul_macs(model, feeds) == 5 * (16 * 32 + 32 * 8)
    assert comparison.matmul_macs(quantize(model, "int8"), feeds) == 5 * (16 * 32 + 32 * 8)


def test_the_manifest_keeps_order_and_lists_the_written_models(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.add(Entry("dense", "dense", "", "models/dense.onnx", scores={"accuracy": 0.6}))
    manifest.add(Entry("ours t1 +int8", "ours", "t1", "models/ours.onnx", 100, "int8-channel"))
    manifest.add(Entry("dense", "dense", "", "models/dense.onnx", scores={"accuracy": 0.7}))
    entries = manifest.entries()
    assert list(entries) == ["dense", "ours t1 +int8"] and entries["dense"].scores == {"accuracy": 0.7}
    assert entries["ours t1 +int8"].series == "ours +100 steps +int8"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ours.onnx").write_bytes(b"")
    assert list(manifest.written()) == ["ours t1 +int8"]


def test_markdown_tables():
    assert comparison.markdown([("a", "b"), ("1", "2")]) == "| a | b |\n|---|---|\n| 1 | 2 |"


@pytest.mark.slow
def test_the_whitened_peer_beats_plain_svd_on_its_calibration_activations(tmp_path):
    from onnx_decomp.torch import export, factorize

    torch.manual_seed(0)
    mix = torch.randn(16, 16) * torch.logspace(0, -2, 16)  # correlated inputs, energy in few directions
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(512, 16) @ mix
    export(model, (x[:2],), tmp_path / "m.onnx", input_names=["x"])
    with torch.no_grad():
        dense = model(x)
    errors = {}
    for whitened in (False, True):
        copy = torch.nn.Sequential(*(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)))
        copy.load_state_dict(model.state_dict())
        if whitened:
            comparison.whitened_low_rank(copy, onnx.load(str(tmp_path / "m.onnx")), {"0": 3},
                                         [{"x": x.numpy()[:256]}, {"x": x.numpy()[256:]}])
        else:
            factorize(copy, {"0": 3})
        assert isinstance(copy[0], torch.nn.Sequential) and copy[0][0].out_features == 3
        with torch.no_grad():
            errors[whitened] = float((copy(x) - dense).norm() / dense.norm())
    assert errors[True] < 0.5 * errors[False]
    with pytest.raises(ValueError, match="no weight of the ONNX model"):
        comparison.whitened_low_rank(model, onnx.load(str(tmp_path / "m.onnx")), {"1": 2}, [{"x": x.numpy()}])
