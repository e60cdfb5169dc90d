"""Statistical analysis of a model: per MatMul/Gemm weight, what training confirmed against the null.

For each weight (once, however many nodes share it): choose the null (``null_models.choose_null``),
p-values ``P0(|w0| >= |w|)``, Storey's pi0, Benjamini-Hochberg at ``fdr`` over the tensor (or over the
whole model with ``fdr_scope="model"``), the confirmed support's density and connected components, and the
layer's share of the model's MatMul work. ``edges="grouped"`` also decides the chains' multi-channel edges
(``criterion.grouped_edge_p_values``). Tensors are analysed one at a time: peak memory follows the largest
tensor, not the model.

Evidence (kept with ``keep_evidence``, for annealing's importance): 1 for a confirmed entry, else ``1 - p``,
the chance that an initial draw is smaller in magnitude: init-like entries weigh little, entries in the
null's tail nearly fully (float16, two bytes per weight).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from onnx import numpy_helper
from tqdm.auto import tqdm

from onnx_decomp.config import AnalysisConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.errors import InvalidModelError, UnsupportedConstructError
from onnx_decomp.io.atomic import staged_output
from onnx_decomp.io.model_io import ModelLike, load_model
from onnx_decomp.io.references import inside
from onnx_decomp.io.walk import iter_tensors
from onnx_decomp.io.outputs import StagedWrites
from onnx_decomp.report.analysis import AnalysisReport, ChainAnalysis, TensorAnalysis
from onnx_decomp.stats.criterion import bh_threshold, grouped_edge_p_values, storey_pi0
from onnx_decomp.stats.null_models import (REFERENCE_KEY, NullChoice, NullSpec, choose_null, nulls_from_metadata,
                                           parse_user_nulls)
from onnx_decomp_passes import WeightedOp, find_chains, plan_from_support

logger = logging.getLogger(__name__)
FIGURES = "figures"  # the report folder's subfolder of PNGs


def _initial_tensors(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The tensors named ``names`` from the reference (initialization) model at ``path``."""
    reference = load_model(path)
    found = {t.name: numpy_helper.to_array(t) for t in iter_tensors(reference.graph) if t.name in names}
    if not found:
        raise InvalidModelError(f"{path}: holds none of the analysed weights {sorted(names)[:3]}...")
    return found


def _figure_stems(names: Iterable[str]) -> dict[str, str]:
    """A file stem per weight: its name in safe characters, numbered where two names come out alike (``W₁``
    and ``W₂`` both read ``W``; compared without case, as some file systems compare)."""
    stems: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "weight"
        stem, n = base, 1
        while stem.lower() in {s.lower() for s in stems.values()}:
            n += 1
            stem = f"{base}_{n}"
        stems[name] = stem
    return stems


class _Weight:
    """One distinct weight: its ops, null and p-values (recomputed on demand to keep memory flat)."""

    def __init__(self, ops: list[WeightedOp], choice: NullChoice, initial: Optional[np.ndarray]):
        self.ops, self.choice = ops, choice
        self.matrix = np.asarray(ops[0].matrix(), dtype=np.float64)
        self.null = choice.spec.build(self.matrix, None if initial is None else ops[0].layout.to_matrix(initial))

    def p_values(self) -> np.ndarray:
        return self.null.sf_abs(self.matrix)


def analyze(model: ModelLike, *, nulls: Sequence[str] = (), fdr: float = 0.05, fdr_scope: str = "tensor",
            init_reference: Optional[Union[str, os.PathLike]] = None, edges: str = "entries",
            report_dir: Optional[Union[str, os.PathLike]] = None, figures: bool = True,
            keep_masks: bool = False) -> AnalysisReport:
    """Analyse every MatMul/Gemm weight of ``model`` (module rule); write figures under
    ``report_dir/figures`` (staged: on failure nothing is written); keep the confirmed masks in the report
    with ``keep_masks``."""
    config = AnalysisConfig(nulls, fdr, fdr_scope, init_reference, edges)
    ctx = ModelContext.load(model)
    if report_dir is None or not figures:
        return analyze_context(ctx, config, keep_masks=keep_masks)
    with StagedWrites([]) as outputs:
        report = analyze_context(ctx, config, outputs.folder(report_dir), figures, keep_masks)
        outputs.commit()
    return report


def _choose_nulls(ctx: ModelContext, by_weight: dict, config: AnalysisConfig, report: AnalysisReport):
    """The null of every weight and the initial tensors known for them (``null_models`` priority; a known
    initial tensor beats the guess)."""
    metadata = {p.key: p.value for p in ctx.proto.metadata_props}
    recorded, rules = nulls_from_metadata(metadata), parse_user_nulls(config.nulls)
    choices = {name: choose_null(name, recorded, rules) for name in by_weight}
    reference_path = config.init_reference
    if reference_path is None and REFERENCE_KEY in metadata and ctx.source is not None:
        reference_path = inside(ctx.source.parent, metadata[REFERENCE_KEY], f"metadata {REFERENCE_KEY}")
    needs_reference = {n for n, c in choices.items() if c.spec.name == "reference"}
    initial = _initial_tensors(Path(reference_path), set(by_weight)) if reference_path else {}
    if needs_reference - set(initial):
        raise UnsupportedConstructError(
            f"null 'reference' for {sorted(needs_reference - set(initial))[:3]} but no initial tensor "
            "(give --init-reference)")
    if initial:
        source = "user" if config.init_reference is not None else "metadata"
        choices = {n: NullChoice(NullSpec("reference"), source) if c.source == "guess" and n in initial else c
                   for n, c in choices.items()}
    guessed = sorted(n for n, c in choices.items() if c.source == "guess")
    if guessed:
        report.notes.append(f"{len(guessed)} weight(s) had no recorded or chosen null: guessed torch-linear "
                            f"(U(-1/sqrt(fan_in), 1/sqrt(fan_in))), e.g. {guessed[0]}")
        logger.warning("null model guessed (torch-linear) for %d weights", len(guessed))
    return choices, initial


def analyze_context(ctx: ModelContext, config: AnalysisConfig,
                    report_dir: Optional[Union[str, os.PathLike]] = None, figures: bool = True,
                    keep_masks: bool = False, keep_evidence: bool = False) -> AnalysisReport:
    """``analyze`` on an already loaded model. Weights holding NaN or Inf cannot be tested against a null:
    they are left out with a note, as are the MatMul/Gemm the rewrite skips (with their reasons).
    ``keep_evidence`` keeps each weight's evidence (module rule) in ``report.evidence``."""
    by_weight: dict[str, list[WeightedOp]] = {}
    for op in ctx.ops:
        by_weight.setdefault(op.weight.name, []).append(op)
    fdr = config.fdr
    report = AnalysisReport(ctx.label, fdr, config.fdr_scope, [])
    for name in [name for name, ops in by_weight.items() if not np.isfinite(ops[0].matrix()).all()]:
        report.notes.append(f"weight {name} holds NaN or Inf values: not analysed")
        del by_weight[name]
    report.notes += [f"{s.op_type} {s.node_name} not analysed: {s.reason}" for s in ctx.skipped]
    choices, initial = _choose_nulls(ctx, by_weight, config, report)

    def weight(name: str) -> _Weight:
        return _Weight(by_weight[name], choices[name], initial.get(name))

    threshold = None
    if config.fdr_scope == "model":
        candidates, total = [], 0
        for name in tqdm(by_weight, desc="p-values", unit="tensor", disable=None, leave=False):
            p = weight(name).p_values()
            candidates.append(p[p <= fdr])
            total += p.size
        threshold = bh_threshold(np.concatenate(candidates) if candidates else np.zeros(0), total, fdr)

    total_macs = sum(op.shape[0] * op.shape[1] for op in ctx.ops) or 1
    figure_dir = Path(report_dir) / FIGURES if report_dir is not None and figures else None
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
    chains = [chain for chain in (find_chains(ctx.ops) if config.edges == "grouped" else [])
              if all(op.weight.name in by_weight for op in chain)]
    chain_weights = {op.weight.name for chain in chains for op in chain}
    p_by_weight: dict[str, np.ndarray] = {}
    stems = _figure_stems(by_weight)
    for name in tqdm(by_weight, desc="analysis", unit="tensor", disable=None, leave=False):
        w = weight(name)
        p = w.p_values()
        cut = threshold if threshold is not None else bh_threshold(p[p <= fdr], p.size, fdr)
        confirmed = p <= cut
        plan = plan_from_support(confirmed)
        entry = TensorAnalysis(
            name, [op.node.name for op in w.ops], list(w.matrix.shape), str(w.choice.spec), w.choice.source,
            round(storey_pi0(p), 6), round(float(confirmed.mean()), 6), len(plan.branches),
            len(plan.constant_rows), len(plan.unused_cols),
            round(sum(op.shape[0] * op.shape[1] for op in w.ops) / total_macs, 6))
        if figure_dir is not None:
            entry.figures = _draw(w, confirmed, plan, figure_dir / stems[name])
        report.tensors.append(entry)
        if keep_masks:
            report.masks[name] = confirmed
        if keep_evidence:
            report.evidence[name] = np.where(confirmed, 1.0, 1.0 - p).astype(np.float16)
        if name in chain_weights:
            p_by_weight[name] = p
    for first, second in chains:
        report.chains.append(_chain(first, second, p_by_weight, fdr))
    return report


def _draw(w: _Weight, confirmed: np.ndarray, plan, stem: Path) -> list[str]:
    """Both figures of one weight; their paths relative to the report folder."""
    from onnx_decomp.report.figures import plot_permuted_support, plot_weight_histogram

    paths = [stem.with_name(stem.name + "_hist.png"), stem.with_name(stem.name + "_support.png")]
    with staged_output(paths[0]) as staged:
        plot_weight_histogram(w.matrix, w.null, f"{w.ops[0].weight.name}: weights vs {w.choice.spec}", staged)
    with staged_output(paths[1]) as staged:
        plot_permuted_support(confirmed, plan, f"{w.ops[0].weight.name}: confirmed support, "
                              f"{len(plan.branches)} components", staged)
    return [f"{FIGURES}/{p.name}" for p in paths]


def _chain(first: WeightedOp, second: WeightedOp, p_by_weight: dict, fdr: float) -> ChainAnalysis:
    """Grouped-edge decision for one chain (criterion module rule), BH over the chain's edges."""
    p_edge = grouped_edge_p_values(p_by_weight[first.weight.name], p_by_weight[second.weight.name])
    cut = bh_threshold(p_edge[p_edge <= fdr], p_edge.size, fdr)
    confirmed = p_edge <= cut
    return ChainAnalysis(first.node.name, second.node.name, [second.shape[0], first.shape[0], first.shape[1]],
                         round(storey_pi0(p_edge), 6), round(float(confirmed.mean()), 6),
                         len(plan_from_support(confirmed).branches))
