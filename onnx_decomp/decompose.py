"""The exact ("lossless") driver: load, normalise, plan from the nonzero pattern, rewrite, check, validate.

Cost gate, two steps: a node is a candidate when its plan does at least ``min_flop_reduction`` times
fewer multiply-accumulates than the dense weight (default 2: below that the extra nodes and permutations
cost more than they save, tools/bench_decompose.py); with ``gate="time"`` (default) a candidate is
rewritten only when ONNX Runtime measures it at least ``min_speedup`` times faster at the model's input
shapes (``timing``). ``gate="flops"`` stops after the first step: deterministic, but blind to runtime costs.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from tqdm.auto import tqdm

from onnx_decomp.errors import UnsupportedConstructError, ValidationError
from onnx_decomp.analyze import analyze
from onnx_decomp.model_io import ModelLike, check_model, load_model, model_label
from onnx_decomp.normalized import normalized_graph
from onnx_decomp.model_stats import concrete_shapes, model_stats
from onnx_decomp.report import KEEP, REWRITE, SKIP, NodeReport, Report
from onnx_decomp.runtime import Tolerance, input_specs, validate
from onnx_decomp.timing import DEFAULT_MIN_SPEEDUP, measure_speedup
from passes.block_rewrite import MIN_OPSET, BlockRewrite
from passes.infra import PassError, PassManager
from passes.linear_ops import LinearOp, find_linear_ops
from passes.plan import BlockPlan, plan_from_support

logger = logging.getLogger(__name__)

DEFAULT_MIN_FLOP_REDUCTION = 2.0
DEFAULT_LOSSY_TOLERANCE = 0.05  # relative L2 per output, when the support drops nonzero weights
GATES = ("time", "flops")
SUPPORTS = ("exact", "confirmed")
InputShapes = Optional[Mapping[str, Sequence[int]]]
Timer = Callable[[LinearOp, BlockPlan], Optional[float]]


def _node_report(op: LinearOp, plan: BlockPlan, action: str, reason: str = "",
                 speedup: Optional[float] = None) -> NodeReport:
    return NodeReport(
        op.node.name, op.node.op, op.graph.name, action, reason, op.weight.name, list(op.shape),
        density=float(np.count_nonzero(op.weight.values)) / op.weight.values.size,
        blocks=len(plan.branches), constant_outputs=len(plan.constant_rows),
        unused_inputs=len(plan.unused_cols), flop_reduction=round(plan.flop_reduction, 3),
        speedup=None if speedup is None else round(speedup, 3),
    )


def _decide(op: LinearOp, plan: BlockPlan, min_flop_reduction: float, timer: Optional[Timer],
            min_speedup: float) -> NodeReport:
    """The cost gate of the module docstring, for one node."""
    if plan.flop_reduction < min_flop_reduction:
        dense = len(plan.branches) == 1 and plan.flop_reduction == 1.0
        return _node_report(op, plan, KEEP, "dense: one block" if dense else
                            f"{plan.flop_reduction:.2f}x fewer MACs < {min_flop_reduction:g}x")
    if timer is None:
        return _node_report(op, plan, REWRITE)
    speedup = timer(op, plan)
    if speedup is None:
        return _node_report(op, plan, KEEP, "not timed: input shape unknown (use --input-shape)")
    if speedup < min_speedup:
        return _node_report(op, plan, KEEP, f"measured {speedup:.2f}x < {min_speedup:g}x", speedup)
    return _node_report(op, plan, REWRITE, speedup=speedup)


def plan_nodes(graph: gs.Graph, min_flop_reduction: float = DEFAULT_MIN_FLOP_REDUCTION,
               timer: Optional[Timer] = None, min_speedup: float = DEFAULT_MIN_SPEEDUP,
               masks: Optional[Mapping[str, np.ndarray]] = None,
               ) -> tuple[dict[str, BlockPlan], list[NodeReport]]:
    """Plans from each weight's support (``masks[weight]``, else its nonzero pattern), kept where they pass
    the cost gate; a report per node."""
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
        if key not in by_weight:
            support = masks[op.weight.name] if masks is not None else op.matrix() != 0
            by_weight[key] = plan_from_support(support)
        plan = by_weight[key]
        reports.append(_decide(op, plan, min_flop_reduction, timer, min_speedup))
        if reports[-1].action == REWRITE:
            plans[op.node.name] = plan
    return plans, reports


def _timer(gate: str, graph: gs.Graph, shapes: Mapping[str, list], provider: str) -> Optional[Timer]:
    """For ``gate="time"``: measures a node at its input shape in ``shapes`` (None if unresolved)."""
    if gate not in GATES:
        raise UnsupportedConstructError(f"gate must be one of {GATES}, got {gate!r}")
    if gate == "flops":
        return None

    def timer(op: LinearOp, plan: BlockPlan) -> Optional[float]:
        x_shape = shapes.get(op.node.inputs[0].name)
        if not x_shape or None in x_shape:
            return None
        return measure_speedup(op, plan, x_shape, graph, provider)

    return timer


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a ModelProto carrying the original's model-level fields."""
    model = gs.export_onnx(graph)
    for name in ("doc_string", "domain", "model_version", "producer_name", "producer_version"):
        setattr(model, name, getattr(original, name))
    model.metadata_props.extend(original.metadata_props)
    return model


def _planned(model: ModelLike, input_shapes: InputShapes, gate: str, min_flop_reduction: float,
             min_speedup: float, provider: str, masks: Optional[Mapping[str, np.ndarray]] = None):
    """Load, normalise and plan: the part ``inspect`` and ``decompose`` share."""
    original = load_model(model)
    graph = normalized_graph(original)
    notes: list[str] = []
    specs = input_specs(original, input_shapes, notes)
    shapes = concrete_shapes(original, specs)
    timer = _timer(gate, graph, shapes, provider)
    plans, reports = plan_nodes(graph, min_flop_reduction, timer, min_speedup, masks)
    report = Report(model_label(model), reports, model_stats(original, shapes), notes=notes)
    return original, graph, plans, report


def inspect(model: ModelLike, *, input_shapes: InputShapes = None, gate: str = "time",
            min_flop_reduction: float = DEFAULT_MIN_FLOP_REDUCTION, min_speedup: float = DEFAULT_MIN_SPEEDUP,
            provider: str = "auto") -> Report:
    """Report every MatMul/Gemm with a constant weight, its blocks and whether the gate would rewrite it."""
    return _planned(model, input_shapes, gate, min_flop_reduction, min_speedup, provider)[3]


def decompose(model: ModelLike, *, check: int = 3, provider: str = "auto", input_shapes: InputShapes = None,
              tolerance: Optional[Tolerance] = None, seed: int = 0,
              inputs: Optional[Mapping[str, np.ndarray]] = None, gate: str = "time",
              min_flop_reduction: float = DEFAULT_MIN_FLOP_REDUCTION, min_speedup: float = DEFAULT_MIN_SPEEDUP,
              support: str = "exact", analysis: Optional[Mapping] = None) -> tuple[onnx.ModelProto, Report]:
    """Rewrite every MatMul/Gemm whose support splits into blocks that pass the gate; prove it in ONNX Runtime.

    ``support="exact"`` plans from the nonzero pattern (lossless); ``"confirmed"`` from the entries the
    statistical analysis confirms (``analyze`` with the ``analysis`` keyword arguments): entries outside
    are dropped, a lossy step compared by relative L2 (``DEFAULT_LOSSY_TOLERANCE`` unless ``tolerance``
    says otherwise). Validation runs on ``inputs`` if given, else on ``check`` random input sets; a
    mismatch raises ValidationError carrying the report. ``check=0`` without inputs skips it (noted).
    """
    if support not in SUPPORTS:
        raise UnsupportedConstructError(f"support must be one of {SUPPORTS}, got {support!r}")
    masks = None
    if support == "confirmed":
        masks = analyze(model, keep_masks=True, figures=False, **dict(analysis or {})).masks
        if tolerance is None or tolerance.rel_l2 is None:
            tolerance = Tolerance(rel_l2=DEFAULT_LOSSY_TOLERANCE)
    original, graph, plans, report = _planned(model, input_shapes, gate, min_flop_reduction, min_speedup,
                                              provider, masks)
    try:
        PassManager([BlockRewrite(plans)])(graph)
    except PassError as error:
        raise UnsupportedConstructError(str(error)) from None
    rewritten = _export(graph, original)
    check_model(rewritten)
    report.after = model_stats(rewritten, concrete_shapes(rewritten, input_specs(original, input_shapes)))
    if not plans:
        report.notes.append("no MatMul/Gemm weight passed the gate; the written model is equivalent")
    if support == "confirmed":
        report.notes.append("lossy: weights the analysis did not confirm were dropped; see validation")
    if check > 0 or inputs is not None:
        report.validation = validate(original, rewritten, check, provider, input_shapes,
                                     tolerance or Tolerance(), seed, inputs)
        if not report.validation.ok:
            error = ValidationError("rewritten model differs from the original in ONNX Runtime (see table)")
            error.report = report
            raise error
    else:
        report.notes.append("validation skipped (--check 0): the rewrite is unproven")
    return rewritten, report
