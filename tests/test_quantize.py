"""Quantization by ONNX Runtime (``runtime.quantize``): the decomposed model composes with dynamic int8 (its
block MatMul become integer MatMuls within the documented tolerance); every scheme stays close to float on a
small trained model with the ops it promises; external data, Constant weights and opsets below 13 are
handled; a bad scheme is a one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_decomp
from conftest import op_types, run
from onnx_decomp import GateConfig
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.model_io import save_model
from onnx_decomp.runtime.quantize import INT8_TOLERANCE, quantize, quantize_int8

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


SEQ = Path(__file__).parents[1] / "models" / "seq_transformer"
# Relative L2 error of the logits against float on 256 test rows of the bundled sequence transformer
# (measured: int8 0.005, int8-channel 0.005, int4 0.022, int8-static 0.008) and the op each scheme must leave.
DYNAMIC, QDQ = {"DynamicQuantizeLinear", "MatMulInteger"}, {"QuantizeLinear", "DequantizeLinear"}
SCHEMES = {"int8": (INT8_TOLERANCE, DYNAMIC), "int8-channel": (INT8_TOLERANCE, DYNAMIC),
           "int4": (0.1, {"MatMulNBits"}), "int8-static": (INT8_TOLERANCE, QDQ)}


@pytest.fixture(scope="module")
def sequence_model():
    return onnx.load(SEQ / "model.onnx"), dict(np.load(SEQ / "calib.npz"))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_each_scheme_stays_close_to_float_with_its_ops(sequence_model, scheme):
    model, calib = sequence_model
    tolerance, ops = SCHEMES[scheme]
    quantized = quantize(model, scheme, {"tokens": calib["tokens"][:64]})
    feeds = {"tokens": calib["tokens"][-256:]}  # rows the calibration never saw
    expected, actual = run(model, feeds)[0], run(quantized, feeds)[0]
    assert rel_l2(actual, expected) < tolerance
    assert np.mean(actual.argmax(-1) == expected.argmax(-1)) >= 0.97
    assert ops <= set(op_types(quantized))
    if scheme in ("int8", "int8-channel"):  # the weight zero points: one per tensor, or one per output column
        dims = {t.name: list(t.dims) for t in quantized.graph.initializer}
        zero_points = [dims[n.input[3]] for n in quantized.graph.node if n.op_type == "MatMulInteger"]
        assert all((zp == []) == (scheme == "int8") for zp in zero_points)


def test_a_model_file_with_external_data_quantizes_like_its_proto(tmp_path, sequence_model):
    model, calib = sequence_model
    save_model(model, tmp_path / "model.onnx", external_data=True)
    assert (tmp_path / "model.onnx.data").is_file()
    feeds = {"tokens": calib["tokens"][:32]}
    np.testing.assert_array_equal(run(quantize(tmp_path / "model.onnx", "int8"), feeds)[0],
                                  run(quantize(model, "int8"), feeds)[0])


@pytest.mark.parametrize("scheme, calib, message", [
    ("int3", None, "quantization scheme must be one of int8,int8-channel,int4,int8-static, got 'int3'"),
    ("int8-static", None, "int8-static needs calibration inputs"),
    ("int8-static", {"other": np.zeros((2, 16), np.int64)}, "the calibration inputs lack ['tokens']"),
])
def test_bad_schemes_and_calibration_are_one_line_errors(sequence_model, scheme, calib, message):
    with pytest.raises(UnsupportedConstructError) as error:
        quantize(sequence_model[0], scheme, calib)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("scheme, op, tolerance", [("int8-channel", "ConvInteger", 0.05),
                                                    ("int8-static", "QuantizeLinear", 0.2)])
def test_constant_weights_below_opset_13_quantize_per_channel(scheme, op, tolerance):
    """PaddleOCR's direction classifier: every weight in a Constant node, opset 11 (measured on 16
    calibration images: rel-L2 0.017 dynamic per channel, 0.10 static)."""
    ocr = pytest.importorskip("onnx_decomp_models.ocr")
    from onnx_decomp_models.ocr_graph import with_input_size

    model = with_input_size(onnx.load(ocr.model_path("cls")), ocr.SIZES["cls"])
    assert "Constant" in op_types(model) and model.opset_import[0].version == 11
    calib = dict(np.load(Path(ocr.__file__).parent / "ocr" / "cls_calib.npz"))
    quantized = quantize(model, scheme, calib)
    assert quantized.opset_import[0].version == 13 and op in op_types(quantized)
    assert "Constant" not in op_types(quantized)
    feeds = {"x": calib["x"][:16]}
    expected, actual = run(model, feeds)[0], run(quantized, feeds)[0]
    assert rel_l2(actual, expected) < tolerance
    assert np.mean(actual.argmax(-1) == expected.argmax(-1)) >= 0.9
