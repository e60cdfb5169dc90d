"""The bundled quickstart model (models/digits_blocked.py): a real trained MLP decomposes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

import onnx_decomp
from conftest import FLOPS_BRANCHES, op_types, run

MODEL = Path(__file__).parents[1] / "models" / "digits_blocked"


def test_digits_model_middle_layer_splits_into_its_8_blocks_with_accuracy_unchanged():
    inputs, labels = np.load(MODEL / "calib.npz")["input"], np.load(MODEL / "labels.npz")["logits"]
    original = onnx.load(MODEL / "model.onnx")

    rewritten, report = onnx_decomp.decompose(MODEL / "model.onnx", gate=FLOPS_BRANCHES)

    assert [(n.shape, n.blocks, n.density) for n in report.nodes if n.action == "rewrite"] == [
        ([1024, 1024], 8, 0.125)]
    assert op_types(rewritten).count("Gemm") == 2 + 8
    before, after = run(original, {"input": inputs})[0], run(rewritten, {"input": inputs})[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    accuracy = (after.argmax(1) == labels).mean()
    assert accuracy == (before.argmax(1) == labels).mean() and accuracy > 0.97
    assert report.after.matmul_flops < report.before.matmul_flops / 4
