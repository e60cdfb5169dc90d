"""The anneal driver: the most decomposed model whose fidelity on calibration data stays within a tolerance.

Stages, each a function of the one ``Annealing`` it fills in:
- ``search``: load once -> calibration data (``search.calibration``) -> statistical evidence
  (``stats.analyze``; kept on disk, ``search.evidence``) -> the network, whose weights one ONNX Runtime
  session takes as inputs, and the fidelity gate (the original's outputs and activations) -> every family's
  units and ladders
  (``search.families``) -> the schedule (greedy, rollback, refits judged across tuning folds).
- ``finalize``: stability over bootstrap resamples, the final structure refitted on the whole tuning part,
  its held-out fidelity with and without refit (the held-out outputs of the weights in force kept for
  ``verify``), the masked, refitted dense model; then the search's state (the annealer: its fits per fold,
  activations, caches and units) and the network's session are let go before the model is rewritten.
- ``rewrite``: heads, hidden units and channels removed where a family removed them (``RemoveHeads``,
  ``RemoveUnits``), planned Convs rewritten in the form ONNX Runtime measures fastest or kept
  (``planning.conv``), then the exact path
  (``drivers.decompose`` with ``AnnealedSupport``: the cost gate still decides each node's form).
- ``verify``: the rewritten model checked element by element against the masked, refitted dense model's
  outputs (``EXACT_RTOL``, ``NOISE_FACTOR``; a mismatch raises ``ValidationError`` carrying the report),
  quantized last if asked (``AnnealConfig.quantize``), and measured against the original on the validation
  set: the fidelity the report gives. A validation fidelity above the tolerance (the schedule decided on the
  tuning part) is a loud warning, not a failure.
Quantization inside the budget (our rule): before the search, the original model is quantized and measured
on the tuning samples; what quantization alone costs there is taken off the tolerance, and the structure
is searched within what is left (none left: nothing is cut). Quantization errors and structure errors add
about linearly for the accuracy, top-1 and cosine metrics and at most so for relative L2 (independent errors
add in quadrature), so the composed model lands within the tolerance up to the interaction the held-out
figure shows.
With ``report_dir`` the JSON and the figure are written there (``AnnealReport.write_folder``) once all of it
succeeded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from onnx_decomp.config import AnalysisConfig, AnnealConfig, ClusterConfig, GateConfig, SessionConfig, ValidationConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.decisions import Verdict
from onnx_decomp.distributed.cluster import Cluster, ray_cluster
from onnx_decomp.distributed.folds import fold_annealer
from onnx_decomp.drivers.decompose import Gate, Session, decompose
from onnx_decomp.errors import UnsupportedConstructError, ValidationError
from onnx_decomp.io.model_io import ModelLike, load_model
from onnx_decomp.io.shapes import InputShapes
from onnx_decomp.planning.conv import rewrite_convs
from onnx_decomp.planning.support import AnnealedSupport
from onnx_decomp.report.anneal import AnnealReport, FinalFidelity, UnitInfo, anneal_schema
from onnx_decomp.runtime.quantize import SCHEMES, quantize
from onnx_decomp.search.calibration import Arrays, Calibration, calibration
from onnx_decomp.search.evidence import StoredEvidence
from onnx_decomp.search.families import FAMILIES, Cut, SearchSpace, build_units
from onnx_decomp.search.fidelity import FidelityGate, exact_difference
from onnx_decomp.search.importance import column_norms
from onnx_decomp.search.network import Network, Weights
from onnx_decomp.search.schedule import Annealer
from onnx_decomp.search.stability import stability
from onnx_decomp.stats.analyze import analyze_context
from onnx_decomp.io.graph import export_graph, import_graph
from onnx_decomp_passes import HeadsPlan, Plan, RemoveHeads, RemoveUnits, SlicePlan, Site

logger = logging.getLogger(__name__)

EXACT_RTOL = 1e-5  # per element; atol: EXACT_RTOL times the output's largest magnitude, or more (NOISE_FACTOR)
NOISE_FACTOR = 10  # atol is at least this many times the float reordering ONNX Runtime itself shows on the model
ANNEAL_SCHEMA = anneal_schema(FAMILIES)  # the JSON Schema of anneal.json


@dataclass
class Annealing:
    """One run as its stages fill it in: what was searched, what was kept, and what was written."""

    ctx: ModelContext
    data: Calibration
    config: AnnealConfig
    network: Network
    report: AnnealReport
    fidelity: Optional[FidelityGate] = None  # None: no annealable layer
    annealer: Optional[Annealer] = None  # the search's state, until finalize lets it go
    tuning: float = float("nan")  # the final state's tuning fidelity (the schedule's)
    cuts: dict[Site, Cut] = field(default_factory=dict)
    weights: Weights = field(default_factory=dict)  # the final weights of the cut layers
    held_out: tuple[float, float] = (float("nan"), float("nan"))  # validation fidelity refitted, plainly cut
    masked_outputs: list[np.ndarray] = field(default_factory=list)  # the final weights' held-out outputs
    model: Optional[onnx.ModelProto] = None  # the rewritten model


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


def _quantized(model: onnx.ModelProto, run: "Annealing") -> onnx.ModelProto:
    """``model`` quantized by the run's scheme (``int8-static`` calibrated on the tuning inputs)."""
    return quantize(model, run.config.quantize, calib=run.data.tuning.inputs)


def search(ctx: ModelContext, data: Calibration, config: AnnealConfig, analysis: AnalysisConfig,
           session: SessionConfig, original: Optional[Calibration] = None, make=Annealer) -> Annealing:
    """The search stage (module rule); ``original``: paired original data (``FidelityGate``), ``make``: the
    annealer's class (``distributed.folds.fold_annealer``: on Ray workers)."""
    found = analyze_context(ctx, analysis, figures=False, keep_evidence=True)
    evidence, nulls = StoredEvidence.write(found.evidence), found.nulls  # the evidence on disk (module rule)
    del found
    network = Network(ctx, session, config.max_rows, config.seed)
    fidelity = FidelityGate(network, data, config.metric, config.tolerance, config.outputs, original) \
        if network.layers else None
    space = SearchSpace(network, network.shapes, evidence, config, nulls,
                        fidelity.dense_taps if fidelity else {})
    units = build_units(space) if network.layers else []
    report = AnnealReport(
        ctx.label, config.metric, config.tolerance, config.refit,
        {"source": data.source, "tuning": len(data.tuning), "validation": len(data.held_out),
         "validation_set": data.validation},
        [UnitInfo(u.name, u.family, [layer.weight for layer in u.layers], [u.label(r) for r in range(len(u.rungs))])
         for u in units], [], network.dense_macs, left_out=network.left_out, warnings=list(data.warnings),
        notes=[*ctx.notes, *data.notes, *(fidelity.notes if fidelity else []), *space.notes])
    run = Annealing(ctx, data, config, network, report, fidelity)
    if fidelity is not None and config.quantize is not None:
        alone = fidelity.compare(fidelity.outputs_of(_quantized(network.model_with({}), run), session, "tuning"))
        fidelity.tolerance = max(config.tolerance - alone, 0.0)
        report.quantization = {"scheme": config.quantize, "alone": alone, "budget": fidelity.tolerance,
                               "unquantized": float("nan")}
    if fidelity is not None:
        norms = {site: column_norms(taps) for site, taps in fidelity.dense_taps.items()}
        run.annealer = make(network, fidelity, units, config, norms)
        report.steps = run.annealer.run()
        run.cuts = run.annealer.state.cuts
    return run


def _conclude_search(run: Annealing) -> None:
    """The search's last uses (stability, the final fits), then let it go (its units with their evidence, its
    fits and activations) before the final fits' held-out fidelity is measured."""
    annealer, config = run.annealer, run.config
    run.report.stability = stability(annealer.in_force(), run.fidelity.dense_taps, config.bootstrap, config.seed)
    refitted, plain = annealer.final_refit(run.cuts), annealer.plain(run.cuts)
    run.tuning = annealer.state.fidelity
    run.annealer = annealer = None
    run.fidelity.release_taps()
    run.weights = refitted if config.refit else plain
    outputs = [run.fidelity.outputs(w, "held-out") for w in (refitted, plain)]
    run.held_out = tuple(run.fidelity.compare(o, "held-out") for o in outputs)
    run.masked_outputs = outputs[0 if config.refit else 1]


def finalize(run: Annealing, data: Optional[Path] = None) -> None:
    """The finalize stage (module rule); with ``data``, the masked model's large weights are written to that file
    (``Network.model_with``)."""
    report, config = run.report, run.config
    if run.annealer is not None:
        _conclude_search(run)
    if not report.accepted:
        report.notes.append(_why_nothing(report))
    report.plans = {site: cut.plan for site, cut in run.cuts.items()}
    report.masked = run.network.model_with(run.weights, data)
    run.network.release()


def removed_units(masked: onnx.ModelProto, plans: dict[Site, Plan], shapes: dict[str, list]) -> onnx.ModelProto:
    """The masked model with the heads and units its slice plans remove gone (``RemoveHeads``, ``RemoveUnits``;
    exact: their consumers' columns are zero in it)."""
    slices = {site: plan for site, plan in plans.items() if isinstance(plan, SlicePlan)}
    if not slices:
        return masked
    heads = {site: plan for site, plan in slices.items() if isinstance(plan, HeadsPlan)}
    graph = import_graph(masked)
    RemoveHeads(heads, shapes)(graph)
    RemoveUnits({site: plan for site, plan in slices.items() if site not in heads})(graph)
    return export_graph(graph, like=masked)


def rewrite(run: Annealing, input_shapes: InputShapes, gate: GateConfig, session: SessionConfig) -> None:
    """The rewrite stage (module rule): heads and units removed, planned Convs rewritten, then the exact path
    for the other plans."""
    plans = {site: plan for site, plan in run.report.plans.items() if not isinstance(plan, SlicePlan)}
    conv_plans = {site: plan for site, plan in plans.items() if run.network.by_site[site].conv}
    slices = len(plans) < len(run.report.plans)
    masked = run.report.masked  # by block a file (``drivers.by_block``), read in only if its graph is edited here
    if not isinstance(masked, onnx.ModelProto) and (conv_plans or slices):
        masked = load_model(masked)
    model, convs = rewrite_convs(removed_units(masked, run.report.plans, run.network.shapes), conv_plans,
                                 input_shapes, gate, session)
    run.report.notes += [decision.line() for decision in convs]
    run.model, run.report.decomposition = decompose(
        model, input_shapes=input_shapes, gate=gate,
        support=AnnealedSupport(plans), session=session, validation=ValidationConfig(check=0))
    notes = run.report.decomposition.notes
    run.report.decomposition.notes = [n for n in notes if not n.startswith("validation skipped")]


def verify(run: Annealing, session: SessionConfig) -> None:
    """The verify stage (module rule)."""
    report, fidelity = run.report, run.fidelity
    if fidelity is not None:
        masked_outputs = run.masked_outputs
        rewritten_outputs = fidelity.outputs_of(run.model, session)
        scale = max((float(np.abs(o).max(initial=0.0)) for o in masked_outputs), default=0.0)
        noise, _ = exact_difference(masked_outputs, fidelity.outputs_of(
            report.masked, dataclasses.replace(session, optimize=False)), 0.0, 0.0)
        atol = max(EXACT_RTOL * scale, NOISE_FACTOR * noise)
        gap, ok = exact_difference(masked_outputs, rewritten_outputs, EXACT_RTOL, atol)
        validation = fidelity.compare(rewritten_outputs, "held-out")
        if report.quantization is not None and ok:
            run.model = _quantized(run.model, run)
            report.quantization["unquantized"] = validation
            validation = fidelity.compare(fidelity.outputs_of(run.model, session), "held-out")
        report.final = FinalFidelity(run.network.dense_macs, run.network.macs(run.cuts), run.tuning,
                                     validation, *run.held_out, gap, ok,
                                     f"rtol {EXACT_RTOL:g}, atol {atol:.3g}; the masked model's own gap with ONNX "
                                     f"Runtime's graph optimizations off: {noise:.3g}")
        if validation > report.tolerance:
            report.warnings.append(
                f"{report.metric} on the validation set is {report.final.validation:.4g} > tolerance "
                f"{report.tolerance:g} (tuning {report.final.tuning:.4g}): the calibration data may be too few "
                "samples")
            logger.warning(report.warnings[-1])
        if not report.final.exact_ok:
            raise ValidationError("the rewritten model differs from the masked, refitted dense model (see table)",
                                  report)


def anneal(model: ModelLike, calib: Optional[Arrays] = None, *, labels: Optional[Arrays] = None,
           inputs: Optional[Arrays] = None, metric: Optional[str] = None, tolerance: Optional[float] = None,
           refit: Optional[bool] = None, blocks: Optional[int] = None, config: Optional[AnnealConfig] = None,
           analysis: Optional[AnalysisConfig] = None, input_shapes: InputShapes = None, gate: Gate = "time",
           session: Session = "auto", report_dir: Optional[Union[str, os.PathLike]] = None,
           inline_functions: bool = False, cluster: Union[None, ClusterConfig, Cluster] = None
           ) -> tuple[onnx.ModelProto, AnnealReport]:
    """Anneal ``model`` on calibration data (module rule) and rewrite it exactly; returns the rewritten model
    and the report (``report.plans``: Site -> plan, for ``onnx_decomp.torch.apply_block_mask``;
    ``report.masked``: the masked, refitted dense model). ``calib``, ``labels``, ``inputs``: ``.npz`` paths or
    mappings (``search.calibration``); ``metric``, ``tolerance``, ``refit``, ``blocks`` override ``config``;
    ``inline_functions`` as for ``decompose``; ``cluster``: the schedule's folds on Ray workers
    (``distributed.cluster``: a config, or a cluster the caller holds; the same result)."""
    config = config or AnnealConfig()
    overrides = {k: v for k, v in dict(metric=metric, tolerance=tolerance, refit=refit).items() if v is not None}
    if blocks is not None:
        overrides["block"] = dataclasses.replace(config.block, blocks=blocks)
    config = dataclasses.replace(config, **overrides)
    if config.quantize is not None and config.quantize not in SCHEMES:
        raise UnsupportedConstructError(f"quantize must be one of {','.join(SCHEMES)}, got {config.quantize!r}")
    gate, session = GateConfig.of(gate), SessionConfig.of(session)
    with threadpool_limits(config.blas_threads, user_api="blas"), ray_cluster(cluster) as ray:
        ctx = ModelContext.load(model, input_shapes, inline_functions)
        data = calibration(ctx, config, calib, labels, inputs)
        make = Annealer if ray is None else fold_annealer(ray, ctx, input_shapes, inline_functions, session, config,
                                                          data)
        run = search(ctx, data, config, analysis or AnalysisConfig(), session, make=make)
        finalize(run)
        rewrite(run, input_shapes, gate, session)
        verify(run, session)
    if report_dir is not None:
        run.report.write_folder(report_dir)
    return run.model, run.report
