"""The int8 peer: ONNX Runtime's own dynamic quantization of a model, as a user would run it.

Rule: ``onnxruntime.quantization.quantize_dynamic`` with signed int8 weights and its defaults otherwise
(per-tensor scales, every op type it knows); the model goes through a temporary folder and comes back as a
ModelProto. Quantization changes results: ``INT8_TOLERANCE`` is the relative L2 error of the outputs a
quantized model is held to (README, "Composition with quantization").
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.runtime.sessions import onnxruntime, ort_message

INT8_TOLERANCE = 0.05  # relative L2 error of every output, quantized against float

logger = logging.getLogger(__name__)


def _quantizer_advice(record: logging.LogRecord) -> bool:
    """Drop the quantizer's advice to pre-process (logged on the root logger at every call)."""
    return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` quantized by ONNX Runtime (module rule)."""
    onnxruntime()  # a clear error when it is not installed
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="onnx-decomp-int8-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(model, source)
        root = logging.getLogger()
        root.addFilter(_quantizer_advice)
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        except Exception as error:  # the quantizer raises plain Exceptions of many kinds
            raise UnsupportedConstructError(f"ONNX Runtime cannot quantize the model: {ort_message(error)}") from None
        finally:
            root.removeFilter(_quantizer_advice)
        quantized = onnx.load(target)
    logger.info("quantized to int8: %d nodes", len(quantized.graph.node))
    return quantized
