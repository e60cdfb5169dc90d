"""ONNX Runtime's int8 quantization of the OCR models, as a user would run it.

- static: QDQ ``quantize_static`` with MinMax ranges from the calibration images (one image per step), int8
  activations and weights; ``per_channel`` weight scales; ``op_types`` limits which ops are quantized (None:
  every op type the quantizer knows).
- dynamic: ``quantize_dynamic`` (the library's int8 peer: int8 weights per tensor, activations quantized at
  run time; Conv becomes ConvInteger).
Both quantize only weights stored as initializers (``quantize_dynamic`` fails on a weight in a Constant node,
as every weight of the packaged files is), and per-channel scales need DequantizeLinear's ``axis``
(opset 13) where the models are opset 11/12: so ``prepared`` moves the Constants into initializers and
converts the model to opset 17 (outputs equal to 2e-6) before quantizing.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import version_converter

from onnx_decomp.runtime.quantize import quantize_int8
from onnx_decomp_models.ocr_graph import with_initializers

OPSET = 17


def prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its weights in initializers, at opset ``OPSET``."""
    return version_converter.convert_version(with_initializers(model), OPSET)


def _quiet(record: logging.LogRecord) -> bool:
    """Drop the quantizer's advice to pre-process (logged on the root logger at every call)."""
    return "pre-processing" not in record.getMessage()


def static_int8(model: onnx.ModelProto, calibration: Mapping[str, np.ndarray], per_channel: bool = False,
                op_types: Optional[Sequence[str]] = None) -> onnx.ModelProto:
    """``model`` (``prepared``) quantized to QDQ int8 with activation ranges from ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            count = len(next(iter(calibration.values())))
            self.rows = iter([{k: v[i:i + 1] for k, v in calibration.items()} for i in range(count)])

        def get_next(self):
            return next(self.rows, None)

    with tempfile.TemporaryDirectory(prefix="onnx-decomp-ocr-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(model, source)
        logging.getLogger().addFilter(_quiet)
        try:
            quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            op_types_to_quantize=list(op_types) if op_types else None)
        finally:
            logging.getLogger().removeFilter(_quiet)
        return onnx.load(target)


def dynamic_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (``prepared``) quantized by ``quantize_dynamic`` (module docstring)."""
    return quantize_int8(model)
