"""The decompose and inspect drivers: load once, plan every node through the gate, rewrite, check, validate.

Rule: ``inspect`` stops after the decisions; ``decompose`` folds their permutations into neighbouring weights
(``FoldPermutation``), rewrites the nodes decided for rewriting in their chosen forms (``BlockRewrite``),
keeps chains in block layout (``KeepBlockLayout``), checks the result with ``onnx.checker`` (full check,
strict shape inference) and proves it against the original in ONNX Runtime; a mismatch raises
``ValidationError`` carrying the report."""

from __future__ import annotations

from typing import Optional, Union

import onnx

from onnx_decomp.config import GateConfig, SessionConfig, ValidationConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.model_stats import model_stats
from onnx_decomp.decisions import Decision, forms_to_apply, plans_to_apply
from onnx_decomp.errors import UnsupportedConstructError, ValidationError
from onnx_decomp.io.graph import export_graph
from onnx_decomp.io.model_io import ModelLike, check_model, load_references
from onnx_decomp.io.shapes import InputShapes, concrete_shapes
from onnx_decomp.planning.gate import plan_nodes
from onnx_decomp.planning.support import Support, support_of
from onnx_decomp.report.decomposition import Report
from onnx_decomp.runtime.validation import validate
from onnx_decomp_passes import (FORMS_BY_NAME, BlockRewrite, FoldPermutation, KeepBlockLayout, PassError,
                                PassManager)

Gate = Union[str, GateConfig]
Session = Union[str, SessionConfig]


def _report(ctx: ModelContext, decisions: list[Decision]) -> Report:
    return Report(ctx.label, decisions, model_stats(ctx.scoped, ctx.shapes), notes=ctx.notes)


def inspect(model: ModelLike, *, input_shapes: InputShapes = None, gate: Gate = "time",
            session: Session = "auto", inline_functions: bool = False) -> Report:
    """Report every MatMul/Gemm with a constant weight, its blocks and whether the gate would rewrite it."""
    ctx = ModelContext.load(model, input_shapes, inline_functions)
    return _report(ctx, plan_nodes(ctx, GateConfig.of(gate), SessionConfig.of(session)))


def _rewrite(ctx: ModelContext, decisions: list[Decision]) -> onnx.ModelProto:
    """The model with every node decided for rewriting replaced in its chosen form (consumes ``ctx.graph``):
    permutations folded into neighbouring weights first, chains kept in block layout after; checked. With
    nothing to rewrite, the model as loaded: what needs no rewrite comes out as it went in."""
    plans = plans_to_apply(decisions)
    if not plans:
        return ctx.proto
    fold = FoldPermutation(plans)
    try:
        fold(ctx.graph)
        chosen = {name: FORMS_BY_NAME[form] for name, form in forms_to_apply(decisions).items()}
        PassManager([BlockRewrite(fold.plans, chosen=chosen), KeepBlockLayout()])(ctx.graph)
    except PassError as error:
        raise UnsupportedConstructError(str(error)) from None
    rewritten = export_graph(ctx.graph, like=ctx.proto)  # weights kept dense stay references to their files
    check_model(rewritten)
    return rewritten


def decompose(model: ModelLike, *, input_shapes: InputShapes = None, gate: Gate = "time",
              support: Union[str, Support] = "exact", session: Session = "auto",
              validation: Optional[ValidationConfig] = None, inline_functions: bool = False,
              references: bool = False) -> tuple[onnx.ModelProto, Report]:
    """Rewrite every MatMul/Gemm whose support splits into blocks that pass the gate; prove it in ONNX Runtime.

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
    decisions = plan_nodes(ctx, gate, session, support.masks(ctx))
    report = _report(ctx, decisions)
    rewritten = _rewrite(ctx, decisions)
    report.after = model_stats(rewritten, concrete_shapes(rewritten, ctx.specs, data_prop=True))
    if not report.planned:
        report.notes.append("no MatMul/Gemm weight passed the gate; the written model is equivalent")
    if support.note:
        report.notes.append(support.note)
    if validation.check > 0 or validation.inputs is not None:
        report.validation = validate(ctx.proto, rewritten, ctx.specs, validation,
                                     support.tolerance(validation.tolerance), session, ctx.base_dir)
        if not report.validation.ok:
            error = ValidationError("rewritten model differs from the original in ONNX Runtime (see table)")
            error.report = report
            raise error
    else:
        report.notes.append("validation skipped (--check 0): the rewrite is unproven")
    if not references:
        load_references(rewritten, ctx.base_dir)  # the caller gets a self-contained model
    return rewritten, report
