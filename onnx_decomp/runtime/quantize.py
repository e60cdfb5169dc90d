"""Quantization by ONNX Runtime, as a user would run it: one function, four schemes.

Schemes (``SCHEMES``):
- ``int8``: ``quantize_dynamic``, signed int8 weights with one scale per tensor (its default), activations
  quantized at run time (MatMul -> DynamicQuantizeLinear + MatMulInteger, Conv -> ConvInteger);
- ``int8-channel``: the same with one scale per output channel where the weight is 2-D (a 3-D block weight,
  as the ``batched`` form emits, per tensor: ONNX Runtime's MatMulInteger takes no per-channel zero point
  there);
- ``int4``: ``MatMulNBitsQuantizer``, 4-bit symmetric weights in blocks of 32 along the reduction axis,
  ``accuracy_level`` 4 (int8 activations inside the kernel): MatMul -> MatMulNBits;
- ``int8-static``: QDQ ``quantize_static``, int8 weights per channel and int8 activations whose ranges
  (MinMax) come from ``calib`` (arrays keyed by input name, one sample per row, fed one row at a time),
  only on ``STATIC_OP_TYPES`` by default: quantizing elementwise ops made every OCR model slower and ORT's
  defaults (every op type, per-tensor weights) destroyed recognition accuracy.
Preparation: Constant-node weights become initializers first (the quantizers only see initializers), and a
model below opset 13 is converted to 13 where per-channel scales need DequantizeLinear's ``axis``; the
conversion must leave the outputs unchanged (``CONVERSION_RTOL``/``CONVERSION_ATOL`` on the first rows of
``calib``, or on random inputs), and the quantized model must run on those inputs. A model file's external data is read in; a large model goes through the
quantizer with external data. Quantization changes results: ``INT8_TOLERANCE`` is the relative L2 error
of the outputs a dynamic int8 model is held to (README, "Composition with quantization").
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import version_converter

from onnx_decomp.config import SessionConfig
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.graph import export_graph, import_graph
from onnx_decomp.io.model_io import ModelLike, is_large, load_model, save_model
from onnx_decomp.io.shapes import input_specs
from onnx_decomp.runtime.sessions import make_session, onnxruntime, ort_message, random_inputs, run_session

SCHEMES = ("int8", "int8-channel", "int4", "int8-static")
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
PER_CHANNEL_OPSET = 13
INT4_BLOCK, INT4_ACCURACY_LEVEL = 32, 4
INT8_TOLERANCE = 0.05  # relative L2 error of every output, quantized against float
CONVERSION_RTOL, CONVERSION_ATOL, CHECK_ROWS = 1e-4, 1e-5, 4

logger = logging.getLogger(__name__)


def _quantizer_advice(record: logging.LogRecord) -> bool:
    """Drop the quantizer's advice to pre-process (logged on the root logger at every call)."""
    return "pre-processing" not in record.getMessage()


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizers log through the root logger (``logging.info``; ``logging.basicConfig`` at INFO
    when the MatMulNBits one is imported), which prints where the application set up no logging. While they
    run, a root logger without handlers gets a NullHandler, and their advice to pre-process is dropped;
    the root logger's level and handlers are restored after (library code logs, never prints)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    if not handlers:
        root.addHandler(logging.NullHandler())
    root.addFilter(_quantizer_advice)
    try:
        yield
    finally:
        root.removeFilter(_quantizer_advice)
        root.setLevel(level)
        root.handlers[:] = handlers


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check_feeds(model: onnx.ModelProto, calib: Optional[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The first ``CHECK_ROWS`` rows of ``calib`` for the model's inputs, or random inputs (symbolic dims 1)
    without it."""
    specs = input_specs(model)
    if calib is not None:
        return {s.name: calib[s.name][:CHECK_ROWS] for s in specs if s.name in calib}
    return random_inputs(specs, np.random.default_rng(0))


def _converted(model: onnx.ModelProto, calib: Optional[Mapping[str, np.ndarray]]) -> onnx.ModelProto:
    """``model`` at opset ``PER_CHANNEL_OPSET``, its outputs checked unchanged (module rule)."""
    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
    except Exception as error:  # the converter raises RuntimeError and friends per op adapter
        raise UnsupportedConstructError(f"per-channel quantization needs opset {PER_CHANNEL_OPSET}; converting "
                                        f"from opset {_opset(model)} failed: {' '.join(str(error).split())}")
    feeds, cpu = _check_feeds(model, calib), SessionConfig("cpu")
    before = run_session(make_session(model, cpu), feeds, what="the conversion check inputs")
    after = run_session(make_session(converted, cpu), feeds, what="the conversion check inputs")
    for output, old, new in zip(model.graph.output, before, after):
        if not np.allclose(new, old, rtol=CONVERSION_RTOL, atol=CONVERSION_ATOL, equal_nan=True):
            raise UnsupportedConstructError(f"converting to opset {PER_CHANNEL_OPSET} changed output {output.name!r} "
                                            f"(max difference {np.max(np.abs(new - old)):.3g})")
    logger.info("converted from opset %d to %d for per-channel scales", _opset(model), PER_CHANNEL_OPSET)
    return converted


def prepared(model: ModelLike, scheme: str, calib: Optional[Mapping[str, np.ndarray]] = None) -> onnx.ModelProto:
    """``model`` ready for ``scheme``: weights in initializers, opset converted where needed (module rule)."""
    proto = load_model(model)
    folded = export_graph(import_graph(proto), like=proto)
    folded.ir_version = proto.ir_version
    if scheme in ("int8-channel", "int8-static") and _opset(folded) < PER_CHANNEL_OPSET:
        return _converted(folded, calib)
    return folded


def _flat_weights(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul/Gemm nodes whose constant weight is not 2-D."""
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and ranks.get(n.input[1], 2) != 2]


def _calibration_reader(model: onnx.ModelProto, calib: Mapping[str, np.ndarray]):
    """An ORT CalibrationDataReader feeding ``calib`` one row at a time; a one-line error where it does not
    cover every graph input."""
    from onnxruntime.quantization import CalibrationDataReader

    names = [spec.name for spec in input_specs(model)]
    missing = [name for name in names if name not in calib]
    if missing:
        raise UnsupportedConstructError(f"the calibration inputs lack {missing} (they have {sorted(calib)})")
    rows = len(calib[names[0]]) if names else 0

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(range(rows))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {name: calib[name][row:row + 1] for name in names}

    return Rows()


def _run_quantizer(model: onnx.ModelProto, scheme: str, calib, op_types: Optional[Sequence[str]]) -> onnx.ModelProto:
    """The scheme's ONNX Runtime quantizer on ``model`` through a temporary folder."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    large = is_large(model)
    with tempfile.TemporaryDirectory(prefix="onnx-decomp-quantize-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "quantized.onnx"
        save_model(model, source, external_data=large)
        if scheme == "int8":
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, use_external_data_format=large)
        elif scheme == "int8-channel":
            blocks = _flat_weights(model)
            channels = Path(folder) / "channels.onnx" if blocks else target
            quantize_dynamic(source, channels, weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=blocks, use_external_data_format=large)
            if blocks:
                quantize_dynamic(channels, target, weight_type=QuantType.QInt8, nodes_to_quantize=blocks,
                                 use_external_data_format=large)
        elif scheme == "int8-static":
            quantize_static(source, target, _calibration_reader(model, calib), quant_format=QuantFormat.QDQ,
                            per_channel=True, op_types_to_quantize=list(op_types) if op_types else None,
                            use_external_data_format=large)
        else:
            quantizer = MatMulNBitsQuantizer(str(source), bits=4, block_size=INT4_BLOCK, is_symmetric=True,
                                             accuracy_level=INT4_ACCURACY_LEVEL)
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), use_external_data_format=large)
        return onnx.load(str(target))  # reads any external data before the folder goes


def quantize(model: ModelLike, scheme: str, calib: Optional[Mapping[str, np.ndarray]] = None,
             op_types: Optional[Sequence[str]] = STATIC_OP_TYPES) -> onnx.ModelProto:
    """``model`` quantized by ``scheme`` (module rule); ``op_types`` limits ``int8-static`` (None: every op
    type ONNX Runtime's quantizer knows)."""
    onnxruntime()  # a clear error when it is not installed
    if scheme not in SCHEMES:
        raise UnsupportedConstructError(f"quantization scheme must be one of {','.join(SCHEMES)}, got {scheme!r}")
    if scheme == "int8-static" and calib is None:
        raise UnsupportedConstructError("int8-static needs calibration inputs (--calib data.npz)")
    source = prepared(model, scheme, calib)
    with _quiet_quantizer():
        try:
            quantized = _run_quantizer(source, scheme, calib, op_types)
        except UnsupportedConstructError:
            raise
        except Exception as error:  # the quantizers raise plain Exceptions of many kinds
            raise UnsupportedConstructError(f"ONNX Runtime cannot quantize the model ({scheme}): "
                                            f"{ort_message(error)}") from None
    run_session(make_session(quantized, SessionConfig("cpu")), _check_feeds(source, calib),
                what=f"the check inputs after {scheme} quantization")
    logger.info("quantized %s: %d nodes", scheme, len(quantized.graph.node))
    return quantized


def quantize_int8(model: ModelLike) -> onnx.ModelProto:
    """``quantize(model, "int8")``: ONNX Runtime's dynamic int8 with its defaults."""
    return quantize(model, "int8")
