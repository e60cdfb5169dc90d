"""Statistical analysis of a model: per MatMul/Gemm/Conv weight, what training confirmed against the null.

For each weight (once, however many nodes share it): choose the null (``null_models.choose_null``; the guess
from the model's ``producer_name``, ``null_models.guess_null``), p-values ``P0(|w0| >= |w|)``, Storey's pi0,
Benjamini-Hochberg at ``fdr`` over the tensor (or over the whole model with ``fdr_scope="model"``), the
confirmed support's density and connected components, and the layer's share of the model's
multiply-accumulates (output elements times ``n_in`` at the input shapes; one output position where a shape
is unknown). A Conv is also decided per channel pair (``channels``: Fisher over the window, BH over the
tensor's pairs, or over every Conv's pairs with ``fdr_scope="model"``); its components, constant outputs and
unused inputs are those of the channel support. ``edges="grouped"`` also decides the MatMul/Gemm chains'
multi-channel edges (``criterion.grouped_edge_p_values``). Tensors are analysed one at a time: peak memory
follows the largest tensor, not the model.

Evidence (kept with ``keep_evidence``, for annealing's importance): 1 for a confirmed entry (channel pair),
else ``1 - p``, the chance that an initial draw is smaller in magnitude: init-like entries weigh little,
entries in the null's tail nearly fully (float16, two bytes per weight; 0 for pairs across groups).
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
from onnx_decomp.io.graph import overridable_initializers
from onnx_decomp.io.model_io import ModelLike, load_model
from onnx_decomp.io.shapes import InputShapes
from onnx_decomp.io.references import inside
from onnx_decomp.io.walk import iter_tensors
from onnx_decomp.io.outputs import StagedWrites
from onnx_decomp.report.analysis import AnalysisReport, ChainAnalysis, TensorAnalysis
from onnx_decomp.stats.channels import block_diagonal, conv_problem, pair_p_values
from onnx_decomp.stats.criterion import bh_threshold, grouped_edge_p_values, storey_pi0
from onnx_decomp.stats.null_models import (REFERENCE_KEY, NullChoice, NullSpec, choose_null, guess_null,
                                           nulls_from_metadata, parse_user_nulls)
from onnx_decomp_passes import CONV, Layout, WeightedOp, all_graphs, find_chains, find_weighted_ops, plan_from_support

logger = logging.getLogger(__name__)
FIGURES = "figures"  # the report folder's subfolder of PNGs
CHUNK_ROWS = 256  # rows of the evidence computed at once


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
        op = ops[0]
        self.conv, self.groups, self.window = op.layout is Layout.KERNEL, op.groups, op.window
        self.matrix = np.asarray(op.matrix(), dtype=np.float64)
        self.null = choice.spec.build(self.matrix, None if initial is None else op.layout.to_matrix(initial),
                                      self.window, self.groups)

    def p_values(self) -> np.ndarray:
        return self.null.sf_abs(self.matrix)

    def pair_p_values(self, p: np.ndarray) -> Optional[np.ndarray]:
        """A Conv's channel-pair p-values ``[C_out, C_in / group]`` (``channels``); None for MatMul/Gemm."""
        return pair_p_values(p, self.window) if self.conv else None


def analyze(model: ModelLike, *, nulls: Sequence[str] = (), fdr: float = 0.05, fdr_scope: str = "tensor",
            init_reference: Optional[Union[str, os.PathLike]] = None, edges: str = "entries",
            report_dir: Optional[Union[str, os.PathLike]] = None, figures: bool = True,
            keep_masks: bool = False, input_shapes: InputShapes = None) -> AnalysisReport:
    """Analyse every MatMul/Gemm/Conv weight of ``model`` (module rule); write figures under
    ``report_dir/figures`` (staged: on failure nothing is written); keep the confirmed masks in the report
    with ``keep_masks``; ``input_shapes`` fix symbolic input dims for the work shares."""
    config = AnalysisConfig(nulls, fdr, fdr_scope, init_reference, edges)
    ctx = ModelContext.load(model, input_shapes)
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
    guesses = {conv: guess_null(ctx.proto.producer_name, conv) for conv in (False, True)}
    choices = {name: choose_null(name, recorded, rules, guesses[ops[0].layout is Layout.KERNEL][0])
               for name, ops in by_weight.items()}
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
    for conv, (spec, reason) in guesses.items():
        guessed = sorted(n for n, c in choices.items() if c.source == "guess" and
                         (by_weight[n][0].layout is Layout.KERNEL) == conv)
        if guessed:
            report.notes.append(f"{len(guessed)} {'Conv' if conv else 'MatMul/Gemm'} weight(s) had no recorded or "
                                f"chosen null: guessed {spec} ({reason}), e.g. {guessed[0]}")
            logger.warning("null model guessed (%s, %s) for %d weights", spec, reason, len(guessed))
    return choices, initial


def _conv_ops(ctx: ModelContext) -> tuple[list[WeightedOp], list[str]]:
    """The Conv ops the analysis tests, and a note for each one it leaves out (``channels``; a weight that is
    an overridable graph input, as for MatMul/Gemm) and for each ConvTranspose."""
    ops, skipped = find_weighted_ops(ctx.graph, CONV)
    overridable = set(overridable_initializers(ctx.proto))
    notes = [f"{s.op_type} {s.node_name} not analysed: {s.reason}" for s in skipped]
    notes += [f"Conv {op.node.name} not analysed: {conv_problem(op)}" for op in ops if conv_problem(op)]
    for node in (node for graph in all_graphs(ctx.graph) for node in graph.nodes):
        if node.op == "Conv" and len(node.inputs) > 1 and node.inputs[1].name in overridable:
            notes.append(f"Conv {node.name} not analysed: weight is a graph input with a default value "
                         "(overridable at run time)")
        if node.op == "ConvTranspose":
            notes.append(f"ConvTranspose {node.name} not analysed: its kernel [C_in, C_out / group, k...] is not "
                         "supported")
    return [op for op in ops if not conv_problem(op)], notes


def _macs(ops: list[WeightedOp], shapes: dict[str, list]) -> tuple[dict[int, int], int]:
    """Multiply-accumulates per op (by ``id``): output elements times ``n_in`` at ``shapes``, or one output
    position (``n_out * n_in``) where the output shape is unknown; and how many were unknown."""
    macs, unknown = {}, 0
    for op in ops:
        out = shapes.get(op.node.outputs[0].name)
        known = bool(out) and all(isinstance(d, int) and d > 0 for d in out)
        unknown += not known
        macs[id(op)] = (int(np.prod(out)) if known else op.shape[0]) * op.shape[1]
    return macs, unknown


def analyze_context(ctx: ModelContext, config: AnalysisConfig,
                    report_dir: Optional[Union[str, os.PathLike]] = None, figures: bool = True,
                    keep_masks: bool = False, keep_evidence: bool = False) -> AnalysisReport:
    """``analyze`` on an already loaded model. Weights holding NaN or Inf cannot be tested against a null:
    they are left out with a note, as are the MatMul/Gemm the rewrite skips and the Conv the analysis cannot
    read (with their reasons). ``keep_evidence`` keeps each weight's evidence (module rule) in
    ``report.evidence`` (a Conv's channel pairs' in ``report.channel_evidence``)."""
    conv_ops, conv_notes = _conv_ops(ctx)
    ops = ctx.ops + conv_ops
    by_weight: dict[str, list[WeightedOp]] = {}
    for op in ops:
        by_weight.setdefault(op.weight.name, []).append(op)
    fdr = config.fdr
    report = AnalysisReport(ctx.label, fdr, config.fdr_scope, [])
    for name in [name for name, ops in by_weight.items() if not np.isfinite(ops[0].matrix()).all()]:
        report.notes.append(f"weight {name} holds NaN or Inf values: not analysed")
        del by_weight[name]
    report.notes += [f"{s.op_type} {s.node_name} not analysed: {s.reason}" for s in ctx.skipped] + conv_notes
    choices, initial = _choose_nulls(ctx, by_weight, config, report)

    def weight(name: str) -> _Weight:
        return _Weight(by_weight[name], choices[name], initial.get(name))

    cuts = _model_thresholds(by_weight, weight, fdr) if config.fdr_scope == "model" else (None, None)
    macs, unknown = _macs(ops, ctx.shapes) if ops else ({}, 0)
    if unknown:
        report.notes.append(f"{unknown} op(s) with an unknown output shape: their work share counts one output "
                            "position (give --input-shape)")
    total_macs = sum(macs.values()) or 1
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
        confirmed = _decide(p, cuts[0], fdr)
        support, channel = confirmed, {}
        if w.conv:
            p_pair = w.pair_p_values(p)
            pairs = _decide(p_pair, cuts[1], fdr)
            support = block_diagonal(pairs, w.groups, False)
            channel = dict(kind="conv", groups=w.groups, window=list(w.ops[0].weight.shape[2:]),
                           channels=list(support.shape), channel_pi0=round(storey_pi0(p_pair), 6),
                           channel_confirmed_density=round(float(pairs.mean()), 6))
        plan = plan_from_support(support)
        entry = TensorAnalysis(
            name, [op.node.name for op in w.ops], list(w.matrix.shape), str(w.choice.spec), w.choice.source,
            round(storey_pi0(p), 6), round(float(confirmed.mean()), 6), len(plan.branches),
            len(plan.constant_rows), len(plan.unused_cols),
            round(sum(macs[id(op)] for op in w.ops) / total_macs, 6), **channel)
        if figure_dir is not None:
            entry.figures = _draw(w, support, plan, figure_dir / stems[name])
        report.tensors.append(entry)
        if keep_masks:
            report.masks[name] = confirmed
            if w.conv:
                report.channel_masks[name] = support
        if keep_evidence:
            report.evidence[name] = _evidence(p, confirmed)
            report.nulls[name] = w.null
            if w.conv:
                report.channel_evidence[name] = block_diagonal(
                    np.where(pairs, 1.0, 1.0 - p_pair).astype(np.float16), w.groups)
        if name in chain_weights:
            p_by_weight[name] = p
        del w, p, confirmed, support  # one weight's arrays at a time: gone before the next weight's are made
    for first, second in chains:
        report.chains.append(_chain(first, second, p_by_weight, fdr))
    return report


def _evidence(p: np.ndarray, confirmed: np.ndarray) -> np.ndarray:
    """The evidence of the module rule (float16), computed ``CHUNK_ROWS`` rows at a time: no float64 temporary
    as large as the weight."""
    evidence = np.empty(p.shape, np.float16)
    for start in range(0, len(p), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        evidence[rows] = np.where(confirmed[rows], 1.0, 1.0 - p[rows])
    return evidence


def _decide(p: np.ndarray, cut: Optional[float], fdr: float) -> np.ndarray:
    """Rejected at ``cut``, or by BH at ``fdr`` over ``p`` itself when there is no pooled cut."""
    return p <= (cut if cut is not None else bh_threshold(p[p <= fdr], p.size, fdr))


def _model_thresholds(by_weight: dict, weight, fdr: float) -> tuple[float, float]:
    """The BH cuts pooled over the model: over every entry, and over every Conv's channel pairs."""
    found: tuple[list, list] = ([], [])
    totals = [0, 0]
    for name in tqdm(by_weight, desc="p-values", unit="tensor", disable=None, leave=False):
        w = weight(name)
        p = w.p_values()
        for kind, values in enumerate((p, w.pair_p_values(p))):
            if values is not None:
                found[kind].append(values[values <= fdr])
                totals[kind] += values.size
    return tuple(bh_threshold(np.concatenate(c) if c else np.zeros(0), total, fdr)
                 for c, total in zip(found, totals))


def _draw(w: _Weight, support: np.ndarray, plan, stem: Path) -> list[str]:
    """Both figures of one weight (the support: entries, or a Conv's channel pairs); their paths relative to
    the report folder."""
    from onnx_decomp.report.figures import plot_permuted_support, plot_weight_histogram

    paths = [stem.with_name(stem.name + "_hist.png"), stem.with_name(stem.name + "_support.png")]
    what, features = ("channel pairs", "channels") if w.conv else ("support", "")
    with staged_output(paths[0]) as staged:
        plot_weight_histogram(w.matrix, w.null, f"{w.ops[0].weight.name}: weights vs {w.choice.spec}", staged)
    with staged_output(paths[1]) as staged:
        plot_permuted_support(support, plan, f"{w.ops[0].weight.name}: confirmed {what}, "
                              f"{len(plan.branches)} components", staged, features)
    return [f"{FIGURES}/{p.name}" for p in paths]


def _chain(first: WeightedOp, second: WeightedOp, p_by_weight: dict, fdr: float) -> ChainAnalysis:
    """Grouped-edge decision for one chain (criterion module rule), BH over the chain's edges."""
    p_edge = grouped_edge_p_values(p_by_weight[first.weight.name], p_by_weight[second.weight.name])
    confirmed = _decide(p_edge, None, fdr)
    return ChainAnalysis(first.node.name, second.node.name, [second.shape[0], first.shape[0], first.shape[1]],
                         round(storey_pi0(p_edge), 6), round(float(confirmed.mean()), 6),
                         len(plan_from_support(confirmed).branches))
