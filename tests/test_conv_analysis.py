"""Conv weights in the statistical analysis: channel pairs (a kernel window per output/input channel, block
diagonal per group), fans per group, the null guessed from producer_name, odd Convs, the real PaddleOCR models."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import make_model, tensor, value
from onnx_decomp import analyze
from onnx_decomp.cli import main
from onnx_decomp.config import AnalysisConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.report.analysis import ANALYSIS_SCHEMA, layer_kind, summarize
from onnx_decomp.stats.analyze import analyze_context
from onnx_decomp.stats.null_models import NullSpec
from onnx_decomp_models import ocr

C_IN, C_OUT, K = 32, 48, 3
BLOCKS = [(10, 6)] * 4  # planted channel blocks (outputs, inputs); 8 outputs and 8 inputs left without any


def planted_conv(rng) -> tuple[np.ndarray, np.ndarray]:
    """A kernel [C_out, C_in, 3, 3] of init-like draws (PyTorch's default, U(+-1/sqrt(C_in * 9))) plus, on the
    planted channel pairs, a trained update N(0, (2 b)^2) on every window entry; channels permuted. Returns
    the kernel and the planted pairs [C_out, C_in]."""
    bound = 1 / math.sqrt(C_IN * K * K)
    kernel = rng.uniform(-bound, bound, (C_OUT, C_IN, K, K))
    planted = np.zeros((C_OUT, C_IN), bool)
    r = c = 0
    for rows, cols in BLOCKS:
        planted[r:r + rows, c:c + cols] = True
        r, c = r + rows, c + cols
    kernel[planted] += rng.normal(0, 2 * bound, (planted.sum(), K, K))
    rows, cols = rng.permutation(C_OUT), rng.permutation(C_IN)
    return kernel[rows][:, cols].astype(np.float32), planted[rows][:, cols]


def conv_model(kernels: dict) -> onnx.ModelProto:
    """3x3 Conv nodes on ``x`` [1, C_in, 6, 6], one per kernel, outputs ``y_<name>``."""
    nodes = [helper.make_node("Conv", ["x", name], [f"y_{name}"], name=f"conv_{name}") for name in kernels]
    return make_model(nodes, [value("x", [1, C_IN, 6, 6])], [value(f"y_{name}", [1, C_OUT, 4, 4]) for name in kernels],
                      [tensor(name, k) for name, k in kernels.items()])


@pytest.mark.parametrize("scope", ["tensor", "model"])
def test_planted_channel_pairs_are_found_with_the_fdr_controlled(rng, scope):
    """Eight replicate layers: the false-discovery proportion averaged over them stays under q, for channel
    pairs and for entries; nearly every planted pair is found."""
    q = 0.1
    draws = {f"w{i}": planted_conv(rng) for i in range(8)}
    model = conv_model({name: k for name, (k, _) in draws.items()})
    report = analyze(model, fdr=q, fdr_scope=scope, keep_masks=True)
    pair_fdp, entry_fdp, power = [], [], []
    for name, (kernel, planted) in draws.items():
        pairs = report.channel_masks[name]
        entries = report.masks[name].reshape(C_OUT, C_IN, K * K)
        pair_fdp.append((pairs & ~planted).sum() / max(pairs.sum(), 1))
        entry_fdp.append(entries[~planted].sum() / max(entries.sum(), 1))
        power.append(pairs[planted].mean())
    assert np.mean(pair_fdp) <= q and np.mean(entry_fdp) <= q
    assert min(power) > 0.97
    first = report.tensors[0]
    assert (first.kind, first.groups, first.window, first.channels) == ("conv", 1, [K, K], [C_OUT, C_IN])
    assert (first.null, first.null_source) == ("kaiming-uniform", "guess")
    assert 0.6 < first.channel_pi0 < 0.9  # 240 of 1536 pairs planted


def test_planted_channel_blocks_are_its_components(rng):
    kernel, planted = planted_conv(rng)
    report = analyze(conv_model({"w": kernel}), fdr=1e-4, keep_masks=True)
    assert (report.channel_masks["w"] == planted).all()
    t = report.tensors[0]
    assert (t.components, t.constant_outputs, t.unused_inputs) == (4, 8, 8)
    assert t.channel_confirmed_density == pytest.approx(planted.mean(), abs=1e-6)


def test_grouped_and_depthwise_fans_are_per_group(rng):
    """Draws from PyTorch's default with fan_in per group: nothing is confirmed but the one planted window,
    placed in its group's block of the [C_out, C_in] support (a fan_in over all input channels would halve
    the bound and confirm about half of the entries)."""
    grouped = rng.uniform(-1 / 6, 1 / 6, (8, 4, 3, 3))  # group 4: 16 inputs, fan_in 4 * 9
    grouped[5, 1] = 0.3  # output 5 is in group 2 (outputs 4-5, inputs 8-11): input 9
    depthwise = rng.uniform(-1 / 3, 1 / 3, (12, 1, 3, 3))
    depthwise[7] = -0.5
    nodes = [helper.make_node("Conv", ["x", "g"], ["yg"], group=4),
             helper.make_node("Conv", ["x12", "d"], ["yd"], group=12)]
    model = make_model(nodes, [value("x", [1, 16, 5, 5]), value("x12", [1, 12, 5, 5])],
                       [value("yg", [1, 8, 3, 3]), value("yd", [1, 12, 3, 3])],
                       [tensor("g", grouped.astype(np.float32)), tensor("d", depthwise.astype(np.float32))])
    report = analyze_context(ModelContext.load(model), AnalysisConfig(fdr=0.05), keep_masks=True, keep_evidence=True)
    g, d = report.tensors
    expected = np.zeros((8, 16), bool)
    expected[5, 9] = True
    assert (report.channel_masks["g"] == expected).all()
    entries = report.masks["g"].reshape(8, 4, 9)
    assert entries[5, 1].all() and entries.sum() <= 12 and g.pi0 > 0.9
    assert (layer_kind(g), g.groups, g.channels, g.components, g.constant_outputs, g.unused_inputs) == \
        ("grouped", 4, [8, 16], 1, 7, 15)
    evidence = report.channel_evidence["g"]
    assert evidence.shape == (8, 16) and evidence[5, 9] == 1 and (evidence[:4, 8:] == 0).all()
    assert (report.channel_masks["d"] == np.diag(np.arange(12) == 7)).all()
    assert (layer_kind(d), d.channels, d.components, d.constant_outputs, d.unused_inputs) == \
        ("depthwise", [12, 12], 1, 11, 11)


def test_conv_fans_follow_pytorch():
    """fan_in = C_in / group * window, fan_out = C_out * window (torch.nn.init._calculate_fan_in_and_fan_out);
    Paddle's Conv default reads every input channel."""
    w = np.zeros((8, 4 * 9))  # a [8, 4, 3, 3] kernel of a group-4 Conv
    assert NullSpec("kaiming-uniform").build(w, window=9, groups=4).bound == pytest.approx(1 / 6)
    assert NullSpec("xavier-uniform").build(w, window=9, groups=4).bound == pytest.approx(math.sqrt(6 / (36 + 72)))
    assert NullSpec("paddle-conv").build(w, window=9, groups=4).sigma == pytest.approx(math.sqrt(2 / 144))


@pytest.mark.parametrize("producer, linear, conv, why", [
    ("pytorch", "torch-linear", "kaiming-uniform", "producer_name 'pytorch': PyTorch default"),
    ("tf2onnx", "xavier-uniform", "xavier-uniform", "producer_name 'tf2onnx': TensorFlow/Keras default"),
    ("keras2onnx", "xavier-uniform", "xavier-uniform", "producer_name 'keras2onnx': TensorFlow/Keras default"),
    ("PaddlePaddle", "xavier-uniform", "paddle-conv", "producer_name 'PaddlePaddle': Paddle default"),
    ("", "torch-linear", "kaiming-uniform", "no producer_name: PyTorch default"),
    ("skl2onnx", "torch-linear", "kaiming-uniform", "unknown producer_name 'skl2onnx': PyTorch default"),
])
def test_the_null_is_guessed_from_producer_name(rng, producer, linear, conv, why):
    nodes = [helper.make_node("Conv", ["x", "k"], ["h"], name="conv"),
             helper.make_node("Flatten", ["h"], ["f"]), helper.make_node("MatMul", ["f", "m"], ["y"], name="fc")]
    model = make_model(nodes, [value("x", [1, 3, 4, 4])], [value("y", [1, 5])],
                       [tensor("k", rng.normal(0, 0.1, (6, 3, 3, 3)).astype(np.float32)),
                        tensor("m", rng.normal(0, 0.1, (24, 5)).astype(np.float32))])
    model.producer_name = producer
    report = analyze(model)
    assert [(t.weight, t.null, t.null_source) for t in report.tensors] == [("m", linear, "guess"), ("k", conv, "guess")]
    assert any(f"guessed {conv} ({why})" in note for note in report.notes)


def odd_convs(rng) -> onnx.ModelProto:
    """A Conv1d with dilation and bias (analysed), and Convs that cannot be: an int8 weight behind
    DequantizeLinear, a weight that is an overridable graph input, a group that does not divide C_out; a
    ConvTranspose."""
    nodes = [
        helper.make_node("Conv", ["x1", "k1", "b1"], ["y1"], name="conv1d", dilations=[2]),
        helper.make_node("DequantizeLinear", ["q", "scale"], ["kq"]),
        helper.make_node("Conv", ["x1", "kq"], ["y2"], name="quantized"),
        helper.make_node("Conv", ["x1", "over"], ["y3"], name="overridable"),
        helper.make_node("Conv", ["x1", "k4"], ["y4"], name="bad_group", group=2),
        helper.make_node("ConvTranspose", ["x1", "kt"], ["y5"], name="transposed"),
    ]
    inits = [tensor("k1", rng.uniform(-0.2, 0.2, (6, 4, 5)).astype(np.float32)), tensor("b1", np.ones(6, np.float32)),
             tensor("q", rng.integers(-100, 100, (6, 4, 3)).astype(np.int8)), tensor("scale", np.float32(0.01)),
             tensor("over", np.ones((6, 4, 3), np.float32)), tensor("k4", np.ones((5, 2, 3), np.float32)),
             tensor("kt", np.ones((4, 6, 3), np.float32))]
    graph = helper.make_graph(nodes, "odd", [value("x1", [1, 4, 16]), value("over", [6, 4, 3])],
                              [value(f"y{i}", [1, c, n]) for i, (c, n) in
                               enumerate([(6, 8), (6, 14), (6, 14), (5, 14), (6, 18)], 1)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_odd_convs_are_analysed_or_left_out_with_a_reason(tmp_path, rng, capfd):
    path = tmp_path / "odd.onnx"
    onnx.save(odd_convs(rng), path)
    out = tmp_path / "report"
    assert main(["analyze", str(path), "--report", str(out)]) == 0, capfd.readouterr().err
    data = json.loads((out / "report.json").read_text())
    jsonschema.validate(data, ANALYSIS_SCHEMA)
    [conv1d] = data["tensors"]
    assert (conv1d["weight"], conv1d["window"], conv1d["channels"], conv1d["confirmed_density"]) == \
        ("k1", [5], [6, 4], 0)
    notes = "\n".join(data["notes"])
    for node, reason in [("quantized", "DequantizeLinear"), ("overridable", "overridable"),
                         ("bad_group", "group=2 does not divide its 5 output channels"),
                         ("transposed", "ConvTranspose")]:
        assert node in notes and reason in notes
    for figure in conv1d["figures"]:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Traceback" not in capfd.readouterr().err


def test_the_paddleocr_models_are_analysed():
    """The recognizer (no producer_name: PyTorch's defaults guessed) and the direction classifier
    (PaddlePaddle: Paddle's) analyse whole; kinds and guesses as the graphs hold them."""
    rec = analyze(ocr.model_path("rec"), input_shapes={"x": (1, 3, 48, 320)})
    jsonschema.validate(rec.to_dict(), ANALYSIS_SCHEMA)
    kinds = {s.kind: s.tensors for s in summarize(rec.tensors)}
    assert kinds == {"linear": 9, "conv kxk": 3, "depthwise": 14, "conv 1x1": 21}
    assert {t.null for t in rec.tensors if t.kind == "conv"} == {"kaiming-uniform"}
    assert all(0 <= t.channel_pi0 <= 1 and t.channels[0] == t.shape[0] for t in rec.tensors if t.kind == "conv")
    cls = analyze(ocr.model_path("cls"))
    assert {t.null for t in cls.tensors if t.kind == "conv"} == {"paddle-conv"}
