"""onnx-decomp: decompose trained MatMul/Gemm weights into independent sub-operators.

    import onnx_decomp
    model, report = onnx_decomp.decompose("model.onnx")
    onnx_decomp.save_model(model, "out.onnx")
"""

from onnx_decomp.analyze import AnalysisReport, analyze
from onnx_decomp.decompose import decompose, inspect
from onnx_decomp.errors import DecompError, InvalidModelError, UnsupportedConstructError, ValidationError
from onnx_decomp.model_io import load_model, save_model
from onnx_decomp.report import NodeReport, Report

__all__ = [
    "analyze", "AnalysisReport", "decompose", "inspect", "load_model", "save_model", "Report", "NodeReport",
    "DecompError", "InvalidModelError", "UnsupportedConstructError", "ValidationError",
]
