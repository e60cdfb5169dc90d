"""The decomposed model composes with ONNX Runtime's dynamic int8 quantization: ``quantize_dynamic`` turns
its block MatMul into integer MatMuls, and the outputs stay within the documented int8 tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_decomp
from conftest import op_types, run
from onnx_decomp import GateConfig
from onnx_decomp.runtime.quantize import INT8_TOLERANCE, quantize_int8

MODEL = Path(__file__).parents[1] / "models" / "digits_blocked"


def rel_l2(actual, expected):
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("form", ["batched", "branches"])
def test_decomposed_digits_model_quantizes_within_int8_tolerance(form):
    inputs, labels = np.load(MODEL / "calib.npz")["input"], np.load(MODEL / "labels.npz")["logits"]
    dense = onnx.load(MODEL / "model.onnx")
    decomposed, report = onnx_decomp.decompose(dense, gate=GateConfig("flops", forms=(form,)))
    assert [n.form for n in report.nodes if n.action == "rewrite"] == [form]

    quantized = quantize_int8(decomposed)

    assert op_types(quantized).count("MatMulInteger") == op_types(decomposed).count("MatMul") + \
        op_types(decomposed).count("Gemm")  # every weighted node went to int8
    expected = run(dense, {"input": inputs})[0]
    actual = run(quantized, {"input": inputs})[0]
    assert rel_l2(actual, expected) < INT8_TOLERANCE
    accuracy = (actual.argmax(1) == labels).mean()
    assert accuracy >= (expected.argmax(1) == labels).mean() - 0.01
