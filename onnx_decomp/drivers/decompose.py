"""The decompose and inspect drivers: load once, plan every node through the gate, rewrite, check, validate.

Rule: ``inspect`` stops after the decisions; ``decompose`` applies the permutation folding the decisions were
judged under to the nodes it rewrites (``FoldPermutation``), rewrites them in their chosen forms and folded
plans (``BlockRewrite``; every emitted node records its site and block in ``metadata_props``), keeps chains in
block layout (``KeepBlockLayout``), checks the result with ``onnx.checker`` (full check, strict shape
inference) and proves it against the original in ONNX Runtime; a mismatch raises ``ValidationError`` carrying
the report."""

from __future__ import annotations

from typing import Optional, Union

import onnx

from onnx_decomp.config import GateConfig, SessionConfig, ValidationConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.model_stats import ModelStats, stats_at
from onnx_decomp.decisions import Planning
from onnx_decomp.errors import UnsupportedConstructError, ValidationError
from onnx_decomp.io.graph import export_graph
from onnx_decomp.io.model_io import ModelLike, check_model, load_references
from onnx_decomp.io.shapes import InputShapes
from onnx_decomp.planning.conv import exact_conv_plans, rewrite_convs
from onnx_decomp.planning.gate import plan_nodes
from onnx_decomp.planning.support import ExactSupport, Support, support_of
from onnx_decomp.report.decomposition import Report
from onnx_decomp.runtime.validation import validate
from onnx_decomp_passes import FORMS, BlockRewrite, FoldPermutation, KeepBlockLayout, PassError, PassManager

Gate = Union[str, GateConfig]
Session = Union[str, SessionConfig]


def _stats(ctx: ModelContext, model: onnx.ModelProto) -> ModelStats:
    """Size and work of ``model`` (the original or its rewrite) at this run's input shapes."""
    return stats_at(model, ctx.specs, base_dir=ctx.base_dir)


def _report(ctx: ModelContext, planning: Planning) -> Report:
    return Report(ctx.label, planning.decisions, _stats(ctx, ctx.scoped), notes=ctx.notes)


def inspect(model: ModelLike, *, input_shapes: InputShapes = None, gate: Gate = "time",
            session: Session = "auto", inline_functions: bool = False) -> Report:
    """Report every MatMul/Gemm with a constant weight, its blocks and whether the gate would rewrite it."""
    ctx = ModelContext.load(model, input_shapes, inline_functions)
    return _report(ctx, plan_nodes(ctx, GateConfig.of(gate), SessionConfig.of(session)))


def _rewrite(ctx: ModelContext, planning: Planning) -> onnx.ModelProto:
    """The model with every node decided for rewriting replaced in its chosen form (consumes ``ctx.graph``):
    permutations folded into neighbouring weights first, chains kept in block layout after; checked. With
    nothing to rewrite, the model as loaded: what needs no rewrite comes out as it went in."""
    rewrites = planning.rewrites()
    if not rewrites:
        return ctx.proto
    plans = {site: candidate.folded or candidate.plan for site, candidate in rewrites.items()}
    chosen = {site: FORMS[candidate.form] for site, candidate in rewrites.items() if candidate.form}
    try:
        result = PassManager([FoldPermutation(planning.folding.restricted(set(rewrites))),
                              BlockRewrite(plans, chosen=chosen)])(ctx.graph)
        emitted = result.artifact.by_pass["BlockRewrite"]
        KeepBlockLayout(emitted)(ctx.graph)
    except PassError as error:
        raise UnsupportedConstructError(str(error)) from error
    metadata = {name: props for emission in emitted.values() for name, props in emission.metadata.items()}
    rewritten = export_graph(ctx.graph, like=ctx.proto, node_metadata=metadata)  # dense weights stay references
    check_model(rewritten)
    return rewritten


def decompose(model: ModelLike, *, input_shapes: InputShapes = None, gate: Gate = "time",
              support: Union[str, Support] = "exact", session: Session = "auto",
              validation: Optional[ValidationConfig] = None, inline_functions: bool = False,
              references: bool = False) -> tuple[onnx.ModelProto, Report]:
    """Rewrite every MatMul/Gemm whose support splits into blocks that pass the gate, and with the exact support
    every Conv its zeros split into channel blocks (``planning.conv``); prove it in ONNX Runtime.

    ``support``: ``"exact"`` (the nonzero pattern, lossless) or ``"confirmed"`` (what the statistical
    analysis confirms, lossy), or a ``planning.support.Support``. ``validation`` (default: 3 random input
    sets, the support's tolerance) with ``check=0`` and no inputs skips the proof (noted in the report).
    ``inline_functions`` inlines model-local functions first, so that their MatMul/Gemm can be rewritten.
    With ``references`` (a model loaded from a file), weights the rewrite keeps stay references to the
    input's external data: write the result with ``save_model(model, path, base_dir=<input's folder>)``,
    which copies them tensor by tensor (a large model is then never held in memory).
    """
    gate, session, support = GateConfig.of(gate), SessionConfig.of(session), support_of(support)
    validation = validation or ValidationConfig()
    ctx = ModelContext.load(model, input_shapes, inline_functions)
    planning = plan_nodes(ctx, gate, session, support.masks(ctx))
    report = _report(ctx, planning)
    rewritten = _rewrite(ctx, planning)
    convs = []
    if isinstance(support, ExactSupport):  # Convs split by their zeros into channel blocks (planning.conv)
        rewritten, convs = rewrite_convs(rewritten, exact_conv_plans(rewritten), input_shapes, gate, session)
        report.notes += [decision.line() for decision in convs]
    report.after = _stats(ctx, rewritten)
    if not report.planned and not any(decision.form for decision in convs):
        report.notes.append("no MatMul/Gemm weight passed the gate; the written model is equivalent")
    if support.note:
        report.notes.append(support.note)
    if validation.check > 0 or validation.inputs is not None:
        report.validation = validate(ctx.proto, rewritten, ctx.specs, validation,
                                     support.tolerance(validation.tolerance), session, ctx.base_dir)
        if not report.validation.ok:
            raise ValidationError("rewritten model differs from the original in ONNX Runtime (see table)", report)
    else:
        report.notes.append("validation skipped (--check 0): the rewrite is unproven")
    if not references:
        load_references(rewritten, ctx.base_dir)  # the caller gets a self-contained model
    return rewritten, report
