"""The anneal driver: the most decomposed model whose fidelity on calibration data stays within a tolerance.

Flow: load once -> calibration data (``search.calibration``) -> statistical evidence (``stats.analyze``) ->
the network, whose weights one ONNX Runtime session takes as inputs, and the fidelity gate (the original's
outputs and activations) -> units and their ladders -> the schedule (greedy, rollback, refits judged
across tuning folds) -> the final structure refitted on the whole tuning part -> stability -> the masked,
refitted dense model -> the exact path (``drivers.decompose`` with ``AnnealedSupport``: the cost gate still
decides each node's form) -> the rewritten model checked element by element against the masked, refitted
dense model (``EXACT_RTOL``; a mismatch raises ``ValidationError`` carrying the report) and measured against
the original on the validation set: the fidelity the report gives. A validation fidelity above the
tolerance (the schedule decided on the tuning part) is a loud warning, not a failure. With ``report_dir``
the JSON and the figure are written there (``AnnealReport.write_folder``) once all of it succeeded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Union

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from onnx_decomp.config import AnalysisConfig, AnnealConfig, GateConfig, SessionConfig, ValidationConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.decisions import Verdict
from onnx_decomp.drivers.decompose import Gate, Session, decompose
from onnx_decomp.errors import ValidationError
from onnx_decomp.io.model_io import ModelLike
from onnx_decomp.io.shapes import InputShapes
from onnx_decomp.planning.support import AnnealedSupport
from onnx_decomp.report.anneal import AnnealReport, FinalFidelity, UnitInfo
from onnx_decomp.search.calibration import Arrays, calibration
from onnx_decomp.search.candidates import build_units
from onnx_decomp.search.fidelity import FidelityGate, exact_difference
from onnx_decomp.search.importance import column_norms
from onnx_decomp.search.network import Network
from onnx_decomp.search.refit import plain_cut
from onnx_decomp.search.schedule import Annealer
from onnx_decomp.search.stability import stability
from onnx_decomp.stats.analyze import analyze_context

logger = logging.getLogger(__name__)

EXACT_RTOL = 1e-5  # per element; atol is EXACT_RTOL times the output's largest magnitude


def _why_nothing(report: AnnealReport) -> str:
    rolled = [s for s in report.steps if s.verdict is Verdict.ROLLED_BACK]
    if not report.units:
        return "nothing accepted: no unit had a structure to try"
    if not report.steps:
        return "nothing accepted: no structure saved MatMul MACs"
    best = min(rolled, key=lambda s: s.candidate.fidelity)
    return (f"nothing accepted: every structure tried broke the tolerance; the closest, {best.candidate.unit} "
            f"{best.candidate.structure}, measured {report.metric} {best.candidate.fidelity:.4g} > "
            f"{report.tolerance:g}; the model is unchanged")


def anneal(model: ModelLike, calib: Optional[Arrays] = None, *, labels: Optional[Arrays] = None,
          inputs: Optional[Arrays] = None, metric: Optional[str] = None, tolerance: Optional[float] = None,
          refit: Optional[bool] = None, blocks: Optional[int] = None, config: Optional[AnnealConfig] = None,
          analysis: Optional[AnalysisConfig] = None, input_shapes: InputShapes = None, gate: Gate = "time",
          session: Session = "auto", report_dir: Optional[Union[str, os.PathLike]] = None,
          inline_functions: bool = False) -> tuple[onnx.ModelProto, AnnealReport]:
    """Anneal ``model`` on calibration data (module rule) and rewrite it exactly; returns the rewritten model
    and the report (``report.plans``: weight name -> BlockPlan, for ``onnx_decomp.torch.apply_block_mask``;
    ``report.masked``: the masked, refitted dense model). ``calib``, ``labels``, ``inputs``: ``.npz`` paths or
    mappings (``search.calibration``); ``metric``, ``tolerance``, ``refit``, ``blocks`` override ``config``;
    ``inline_functions`` as for ``decompose``."""
    overrides = {k: v for k, v in dict(metric=metric, tolerance=tolerance, refit=refit, blocks=blocks).items()
                 if v is not None}
    config = dataclasses.replace(config or AnnealConfig(), **overrides)
    with threadpool_limits(config.blas_threads, user_api="blas"):
        return _anneal(model, calib, labels, inputs, config, analysis or AnalysisConfig(), input_shapes,
                       GateConfig.of(gate), SessionConfig.of(session), report_dir, inline_functions)


def _anneal(model: ModelLike, calib: Optional[Arrays], labels: Optional[Arrays], inputs: Optional[Arrays],
            config: AnnealConfig, analysis: AnalysisConfig, input_shapes: InputShapes, gate: GateConfig,
            session: SessionConfig, report_dir: Optional[Union[str, os.PathLike]], inline_functions: bool,
            ) -> tuple[onnx.ModelProto, AnnealReport]:
    ctx = ModelContext.load(model, input_shapes, inline_functions)
    data = calibration(ctx, config, calib, labels, inputs)
    evidence = analyze_context(ctx, analysis, figures=False, keep_evidence=True).evidence
    network = Network(ctx, session, config.max_rows, config.seed)
    fidelity = FidelityGate(network, data, config.metric, config.tolerance) if network.layers else None
    units = build_units(ctx, network, evidence, config) if network.layers else []
    report = AnnealReport(
        ctx.label, config.metric, config.tolerance, config.refit,
        {"source": data.source, "tuning": len(data.tuning), "validation": len(data.held_out),
         "validation_set": data.validation},
        [UnitInfo(u.name, u.kind, [layer.weight for layer in u.layers], [u.label(r) for r in range(len(u.rungs))])
         for u in units], [], network.dense_macs, left_out=network.left_out, warnings=list(data.warnings),
        notes=[*ctx.notes, *data.notes, *(fidelity.notes if fidelity else [])])
    weights, plans = {}, {}
    if fidelity is not None:
        norms = {index: column_norms(taps) for index, taps in fidelity.dense_taps.items()}
        annealer = Annealer(network, fidelity, units, config, norms)
        report.steps = annealer.run()
        plans, tuning = annealer.state.plans, annealer.state.fidelity
        refitted = annealer.sequential_refit(plans)
        plain = {i: plain_cut(network.layers[i], plan) for i, plan in plans.items()}
        weights = refitted if config.refit else plain
        validation_refit, validation_plain = (fidelity.measure(w, "held-out") for w in (refitted, plain))
        report.stability = stability(annealer.in_force(), fidelity.dense_taps, config.bootstrap, config.seed)
    if not report.accepted:
        report.notes.append(_why_nothing(report))
    report.plans = {network.layers[i].weight: plan for i, plan in plans.items()}
    report.masked = network.model_with(weights)
    rewritten, report.decomposition = decompose(
        report.masked, input_shapes=input_shapes, gate=gate, support=AnnealedSupport(report.plans), session=session,
        validation=ValidationConfig(check=0))
    report.decomposition.notes = [n for n in report.decomposition.notes if not n.startswith("validation skipped")]
    if fidelity is not None:
        masked_outputs = network.run(fidelity.batches["held-out"], weights).outputs
        rewritten_outputs = fidelity.outputs_of(rewritten, session)
        scale = max((float(np.abs(o).max(initial=0.0)) for o in masked_outputs), default=0.0)
        atol = EXACT_RTOL * scale
        gap, ok = exact_difference(masked_outputs, rewritten_outputs, EXACT_RTOL, atol)
        report.final = FinalFidelity(network.dense_macs, network.macs(plans), tuning,
                                     fidelity.compare(rewritten_outputs, "held-out"), validation_refit,
                                     validation_plain, gap, ok, f"rtol {EXACT_RTOL:g}, atol {atol:.3g}")
        if not fidelity.passes(report.final.validation):
            report.warnings.append(
                f"{config.metric} on the validation set is {report.final.validation:.4g} > tolerance "
                f"{config.tolerance:g} (tuning {tuning:.4g}): the calibration data may be too few samples")
            logger.warning(report.warnings[-1])
    if report.final is not None and not report.final.exact_ok:
        raise ValidationError("the rewritten model differs from the masked, refitted dense model (see table)",
                              report)
    if report_dir is not None:
        report.write_folder(report_dir)
    return rewritten, report
