"""onnx-decomp: decompose trained MatMul/Gemm weights into independent sub-operators.

    import onnx_decomp
    model, report = onnx_decomp.decompose("model.onnx", gate="flops")
    onnx_decomp.save_model(model, "out.onnx")
"""

from onnx_decomp.config import AnalysisConfig, GateConfig, SessionConfig, Tolerance, ValidationConfig
from onnx_decomp.drivers.decompose import decompose, inspect
from onnx_decomp.errors import DecompError, InvalidModelError, UnsupportedConstructError, ValidationError
from onnx_decomp.io.model_io import load_model, save_model
from onnx_decomp.planning.support import ConfirmedSupport, ExactSupport
from onnx_decomp.report.analysis import AnalysisReport
from onnx_decomp.report.decomposition import NodeReport, Report
from onnx_decomp.stats.analyze import analyze

__all__ = [
    "analyze", "decompose", "inspect", "load_model", "save_model",
    "GateConfig", "SessionConfig", "ValidationConfig", "Tolerance", "AnalysisConfig",
    "ExactSupport", "ConfirmedSupport",
    "AnalysisReport", "Report", "NodeReport",
    "DecompError", "InvalidModelError", "UnsupportedConstructError", "ValidationError",
]
