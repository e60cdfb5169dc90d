"""onnx-decomp: decompose trained MatMul/Gemm weights into independent sub-operators.

    import onnx_decomp
    model, report = onnx_decomp.decompose("model.onnx", gate="flops")
    onnx_decomp.save_model(model, "out.onnx")
    model, report = onnx_decomp.anneal("model.onnx", "calib.npz", metric="top1", tolerance=0.01)
    report = onnx_decomp.anneal_by_block("model.onnx", "out.onnx", "calib.npz", tolerance=0.05)   # bounded memory
    report = onnx_decomp.shard("model.onnx", "shards/")   # one model per independent sub-network, proved merged
    manifest = onnx_decomp.write_shards("model.onnx", plans, "shards/")   # under your plans (BlockPlan per Site)
    outputs = onnx_decomp.run_shards(manifest, {"x": x}, backend="ray")  # run and merged, here or on Ray actors
"""

from onnx_decomp.config import (AnalysisConfig, AnnealConfig, ClusterConfig, GateConfig, SessionConfig, Tolerance,
                                ValidationConfig)
from onnx_decomp.distributed.inference import ShardRunner, run_shards
from onnx_decomp.distributed.shards import Manifest, write_shards
from onnx_decomp.drivers.anneal import anneal
from onnx_decomp.drivers.by_block import anneal_by_block
from onnx_decomp.drivers.decompose import decompose, inspect
from onnx_decomp.drivers.shard import shard
from onnx_decomp.errors import DecompError, InvalidModelError, UnsupportedConstructError, ValidationError
from onnx_decomp.io.model_io import load_model, save_model
from onnx_decomp.planning.support import AnnealedSupport, ConfirmedSupport, ExactSupport
from onnx_decomp.report.analysis import AnalysisReport
from onnx_decomp.report.anneal import AnnealReport
from onnx_decomp.report.decomposition import NodeReport, Report
from onnx_decomp.report.shards import ShardReport
from onnx_decomp.stats.analyze import analyze

__all__ = [
    "analyze", "anneal", "anneal_by_block", "decompose", "inspect", "load_model", "save_model",
    "shard", "write_shards", "run_shards", "ShardRunner", "Manifest",
    "GateConfig", "SessionConfig", "ValidationConfig", "Tolerance", "AnalysisConfig", "AnnealConfig", "ClusterConfig",
    "ExactSupport", "ConfirmedSupport", "AnnealedSupport",
    "AnalysisReport", "AnnealReport", "Report", "NodeReport", "ShardReport",
    "DecompError", "InvalidModelError", "UnsupportedConstructError", "ValidationError",
]
