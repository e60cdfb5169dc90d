"""The exact ("lossless") driver: load, normalise, plan from the nonzero pattern, rewrite, check, validate.

Cost gate: a node is rewritten when its plan does at least ``min_flop_reduction`` times fewer
multiply-accumulates than the dense weight (default 2: design.md section 6 measures a runtime Gather at
about 40% of a branch's time, so a smaller reduction rarely pays).
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from tqdm.auto import tqdm

from onnx_decomp.errors import UnsupportedConstructError, ValidationError
from onnx_decomp.model_io import ModelLike, check_model, load_model
from onnx_decomp.model_stats import model_stats
from onnx_decomp.report import KEEP, REWRITE, SKIP, NodeReport, Report
from onnx_decomp.runtime import input_specs, validate
from passes.block_rewrite import MIN_OPSET, BlockRewrite
from passes.infra import PassError, PassManager
from passes.linear_ops import LinearOp, find_linear_ops
from passes.normalize import FoldConstantNodes, UniqueNodeNames
from passes.plan import BlockPlan, plan_from_support

logger = logging.getLogger(__name__)

DEFAULT_MIN_FLOP_REDUCTION = 2.0
InputShapes = Optional[Mapping[str, Sequence[int]]]


def _normalized_graph(model: onnx.ModelProto) -> gs.Graph:
    graph = gs.import_onnx(model)
    PassManager([FoldConstantNodes(), UniqueNodeNames()])(graph)
    return graph


def _node_report(op: LinearOp, plan: BlockPlan, action: str, reason: str = "") -> NodeReport:
    return NodeReport(
        op.node.name, op.node.op, op.graph.name, action, reason, op.weight.name, list(op.shape),
        density=float(np.count_nonzero(op.weight.values)) / op.weight.values.size,
        blocks=len(plan.branches), constant_outputs=len(plan.constant_rows),
        unused_inputs=len(plan.unused_cols), flop_reduction=round(plan.flop_reduction, 3),
    )


def plan_exact(graph: gs.Graph, min_flop_reduction: float) -> tuple[dict[str, BlockPlan], list[NodeReport]]:
    """Plans from each weight's nonzero pattern, kept where they pass the cost gate; a report per node."""
    ops, skipped = find_linear_ops(graph)
    reports = [NodeReport(s.node_name, s.op_type, s.graph_name, SKIP, s.reason) for s in skipped]
    plans: dict[str, BlockPlan] = {}
    by_weight: dict[str, BlockPlan] = {}
    for op in tqdm(ops, desc="planning", unit="node", disable=None, leave=False):
        if (graph.opset or 0) < MIN_OPSET:
            reports.append(NodeReport(op.node.name, op.node.op, op.graph.name, SKIP,
                                      f"opset {graph.opset} < {MIN_OPSET}", op.weight.name, list(op.shape)))
            continue
        key = f"{op.weight.name}/{op.transposed}"
        plan = by_weight.get(key) or by_weight.setdefault(key, plan_from_support(op.matrix() != 0))
        if plan.flop_reduction >= min_flop_reduction:
            plans[op.node.name] = plan
            reports.append(_node_report(op, plan, REWRITE))
        else:
            dense = len(plan.branches) == 1 and plan.flop_reduction == 1.0
            reason = "dense: one block" if dense else (
                f"{plan.flop_reduction:.2f}x fewer MACs < {min_flop_reduction:g}x")
            reports.append(_node_report(op, plan, KEEP, reason))
    return plans, reports


def _label(model: ModelLike) -> str:
    return "<ModelProto>" if isinstance(model, onnx.ModelProto) else str(model)


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a ModelProto carrying the original's model-level fields."""
    model = gs.export_onnx(graph)
    for name in ("doc_string", "domain", "model_version", "producer_name", "producer_version"):
        setattr(model, name, getattr(original, name))
    model.metadata_props.extend(original.metadata_props)
    return model


def inspect(model: ModelLike, *, input_shapes: InputShapes = None,
            min_flop_reduction: float = DEFAULT_MIN_FLOP_REDUCTION) -> Report:
    """Report every MatMul/Gemm with a constant weight and the blocks its nonzero pattern splits into."""
    original = load_model(model)
    notes: list[str] = []
    _, reports = plan_exact(_normalized_graph(original), min_flop_reduction)
    before = model_stats(original, input_specs(original, input_shapes, notes))
    return Report(_label(model), reports, before, notes=notes)


def decompose(model: ModelLike, *, check: int = 3, provider: str = "auto", input_shapes: InputShapes = None,
              rtol: float = 1e-4, atol: float = 1e-5, seed: int = 0,
              min_flop_reduction: float = DEFAULT_MIN_FLOP_REDUCTION) -> tuple[onnx.ModelProto, Report]:
    """Rewrite every exactly block-structured MatMul/Gemm into branches and prove it in ONNX Runtime.

    ``check`` random input sets are compared (``|new - old| <= atol + rtol * |old|`` per element);
    a mismatch raises ValidationError carrying the report. ``check=0`` skips validation (noted).
    """
    original = load_model(model)
    graph = _normalized_graph(original)
    plans, reports = plan_exact(graph, min_flop_reduction)
    try:
        PassManager([BlockRewrite(plans)])(graph)
    except PassError as error:
        raise UnsupportedConstructError(str(error)) from None
    rewritten = _export(graph, original)
    check_model(rewritten)
    notes: list[str] = []
    specs = input_specs(original, input_shapes, notes)
    report = Report(_label(model), reports, model_stats(original, specs), model_stats(rewritten, specs),
                    notes=notes)
    if not plans:
        notes.append("no MatMul/Gemm weight is block-structured enough to rewrite; model is equivalent")
    if check > 0:
        report.validation = validate(original, rewritten, check, provider, input_shapes, rtol, atol, seed)
        if not report.validation.ok:
            error = ValidationError("rewritten model differs from the original in ONNX Runtime (see table)")
            error.report = report
            raise error
    else:
        notes.append("validation skipped (--check 0): the rewrite is unproven")
    return rewritten, report
