"""Statistical analysis of a model: per MatMul/Gemm weight, what training confirmed against the null.

For each weight (once, however many nodes share it): choose the null (``null_models.choose_null``),
p-values ``P0(|w0| >= |w|)``, Storey's pi0, Benjamini-Hochberg at ``fdr`` over the tensor (or over the
whole model with ``fdr_scope="model"``), the confirmed support's density and connected components, and the
layer's share of the model's MatMul work. ``edges="grouped"`` also decides the chains' multi-channel edges
(``criterion.grouped_edge_p_values``). Tensors are analysed one at a time: peak memory follows the largest
tensor, not the model.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm.auto import tqdm

from onnx_decomp.atomic import staged_output, write_text
from onnx_decomp.criterion import bh_threshold, grouped_edge_p_values, storey_pi0
from onnx_decomp.errors import InvalidModelError, UnsupportedConstructError
from onnx_decomp.model_io import ModelLike, iter_tensors, load_model, model_label
from onnx_decomp.normalized import normalized_graph
from onnx_decomp.null_models import (REFERENCE_KEY, NullChoice, NullSpec, choose_null, nulls_from_metadata,
                                     parse_user_nulls)
from onnx_decomp.report import table
from passes.linear_ops import LinearOp, find_chains, find_linear_ops
from passes.plan import plan_from_support

logger = logging.getLogger(__name__)

FDR_SCOPES = ("tensor", "model")
EDGE_MODES = ("entries", "grouped")


@dataclass
class TensorAnalysis:
    weight: str
    nodes: list[str]
    shape: list[int]  # [n_out, n_in]
    null: str
    null_source: str  # metadata, user or guess
    pi0: float
    confirmed_density: float
    components: int
    constant_outputs: int
    unused_inputs: int
    flop_share: float
    figures: list[str] = field(default_factory=list)


@dataclass
class ChainAnalysis:
    first: str
    second: str
    shape: list[int]  # [d_out, hidden, d_in]
    pi0: float
    confirmed_density: float
    components: int


@dataclass
class AnalysisReport:
    model: str
    fdr: float
    fdr_scope: str
    tensors: list[TensorAnalysis]
    chains: list[ChainAnalysis] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # weight -> confirmed [n_out, n_in]

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["masks"]
        return data

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def format(self) -> str:
        rows = [("weight", "shape", "null", "source", "pi0", "confirmed", "components", "const", "unused",
                 "FLOP share")]
        rows += [(t.weight, "x".join(map(str, t.shape)), t.null, t.null_source, f"{t.pi0:.3f}",
                  f"{t.confirmed_density:.4f}", t.components, t.constant_outputs, t.unused_inputs,
                  f"{t.flop_share:.3f}") for t in self.tensors]
        lines = [f"FDR q={self.fdr:g} per {self.fdr_scope}",
                 table(rows) if self.tensors else "no MatMul/Gemm with a constant weight"]
        if self.chains:
            lines += ["", "grouped edges (chains W2 . act . W1):", table(
                [("first", "second", "d_out x h x d_in", "pi0", "confirmed", "components")] +
                [(c.first, c.second, "x".join(map(str, c.shape)), f"{c.pi0:.3f}", f"{c.confirmed_density:.4f}",
                  c.components) for c in self.chains])]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


ANALYSIS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["model", "fdr", "fdr_scope", "tensors", "chains", "notes"],
    "properties": {
        "model": {"type": "string"},
        "fdr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "fdr_scope": {"enum": list(FDR_SCOPES)},
        "notes": {"type": "array", "items": {"type": "string"}},
        "tensors": {"type": "array", "items": {
            "type": "object",
            "required": ["weight", "nodes", "shape", "null", "null_source", "pi0", "confirmed_density",
                         "components", "constant_outputs", "unused_inputs", "flop_share", "figures"],
            "properties": {
                "weight": {"type": "string"},
                "nodes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                          "maxItems": 2},
                "null": {"type": "string"},
                "null_source": {"enum": ["metadata", "user", "guess"]},
                "pi0": {"type": "number", "minimum": 0, "maximum": 1},
                "confirmed_density": {"type": "number", "minimum": 0, "maximum": 1},
                "components": {"type": "integer", "minimum": 0},
                "constant_outputs": {"type": "integer", "minimum": 0},
                "unused_inputs": {"type": "integer", "minimum": 0},
                "flop_share": {"type": "number", "minimum": 0, "maximum": 1},
                "figures": {"type": "array", "items": {"type": "string"}},
            }}},
        "chains": {"type": "array", "items": {
            "type": "object",
            "required": ["first", "second", "shape", "pi0", "confirmed_density", "components"],
            "properties": {"shape": {"type": "array", "items": {"type": "integer"}, "minItems": 3,
                                     "maxItems": 3},
                           "pi0": {"type": "number", "minimum": 0, "maximum": 1},
                           "confirmed_density": {"type": "number", "minimum": 0, "maximum": 1}}}},
    },
}


def _initial_tensors(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The tensors named ``names`` from the reference (initialization) model at ``path``."""
    reference = load_model(path)
    found = {t.name: numpy_helper.to_array(t) for t in iter_tensors(reference.graph) if t.name in names}
    if not found:
        raise InvalidModelError(f"{path}: holds none of the analysed weights {sorted(names)[:3]}...")
    return found


def _oriented(op: LinearOp, stored: np.ndarray) -> np.ndarray:
    """A tensor stored like ``op.weight`` as ``[n_out, n_in]``."""
    return stored if op.transposed else stored.T


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "weight"


class _Weight:
    """One distinct weight: its ops, null and p-values (recomputed on demand to keep memory flat)."""

    def __init__(self, ops: list[LinearOp], choice: NullChoice, initial: Optional[np.ndarray]):
        self.ops, self.choice = ops, choice
        self.matrix = np.asarray(ops[0].matrix(), dtype=np.float64)
        self.null = choice.spec.build(self.matrix, None if initial is None else _oriented(ops[0], initial))

    def p_values(self) -> np.ndarray:
        return self.null.sf_abs(self.matrix)


def analyze(model: ModelLike, *, nulls: Sequence[str] = (), fdr: float = 0.05, fdr_scope: str = "tensor",
            init_reference: Optional[Union[str, os.PathLike]] = None, edges: str = "entries",
            report_dir: Optional[Union[str, os.PathLike]] = None, figures: bool = True,
            keep_masks: bool = False) -> AnalysisReport:
    """Analyse every MatMul/Gemm weight (module rule); write figures under ``report_dir/figures``."""
    if not 0 < fdr < 1:
        raise UnsupportedConstructError(f"--fdr must be in (0, 1), got {fdr}")
    if fdr_scope not in FDR_SCOPES or edges not in EDGE_MODES:
        raise UnsupportedConstructError(f"fdr_scope in {FDR_SCOPES}, edges in {EDGE_MODES}")
    original = load_model(model)
    rules = parse_user_nulls(nulls)
    metadata = {p.key: p.value for p in original.metadata_props}
    recorded = nulls_from_metadata(metadata)
    ops, _ = find_linear_ops(normalized_graph(original))
    by_weight: dict[str, list[LinearOp]] = {}
    for op in ops:
        by_weight.setdefault(op.weight.name, []).append(op)
    report = AnalysisReport(model_label(model), fdr, fdr_scope, [])

    choices = {name: choose_null(name, recorded, rules) for name in by_weight}
    reference_path = init_reference
    if reference_path is None and REFERENCE_KEY in metadata and not isinstance(model, onnx.ModelProto):
        reference_path = Path(model).parent / metadata[REFERENCE_KEY]
    needs_reference = {n for n, c in choices.items() if c.spec.name == "reference"}
    initial = _initial_tensors(Path(reference_path), set(by_weight)) if reference_path else {}
    if needs_reference - set(initial):
        raise UnsupportedConstructError(
            f"null 'reference' for {sorted(needs_reference - set(initial))[:3]} but no initial tensor "
            "(give --init-reference)")
    if initial:  # a known initialization beats the guess
        source = "user" if init_reference is not None else "metadata"
        choices = {n: NullChoice(NullSpec("reference"), source) if c.source == "guess" and n in initial else c
                   for n, c in choices.items()}
    guessed = sorted(n for n, c in choices.items() if c.source == "guess")
    if guessed:
        report.notes.append(f"{len(guessed)} weight(s) had no recorded or chosen null: guessed torch-linear "
                            f"(U(-1/sqrt(fan_in), 1/sqrt(fan_in))), e.g. {guessed[0]}")
        logger.warning("null model guessed (torch-linear) for %d weights", len(guessed))

    def weight(name: str) -> _Weight:
        return _Weight(by_weight[name], choices[name], initial.get(name))

    threshold = None
    if fdr_scope == "model":
        candidates, total = [], 0
        for name in tqdm(by_weight, desc="p-values", unit="tensor", disable=None, leave=False):
            p = weight(name).p_values()
            candidates.append(p[p <= fdr])
            total += p.size
        threshold = bh_threshold(np.concatenate(candidates) if candidates else np.zeros(0), total, fdr)

    total_macs = sum(op.shape[0] * op.shape[1] for op in ops) or 1
    figure_dir = Path(report_dir) / "figures" if report_dir is not None and figures else None
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
    p_by_weight: dict[str, np.ndarray] = {}
    chain_weights = set()
    chains = find_chains(ops) if edges == "grouped" else []
    for first, second in chains:
        chain_weights |= {first.weight.name, second.weight.name}
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
            entry.figures = _draw(w, confirmed, plan, figure_dir / _safe(name))
        report.tensors.append(entry)
        if keep_masks:
            report.masks[name] = confirmed
        if name in chain_weights:
            p_by_weight[name] = p
    for first, second in chains:
        report.chains.append(_chain(first, second, p_by_weight, fdr))
    return report


def _draw(w: _Weight, confirmed: np.ndarray, plan, stem: Path) -> list[str]:
    from onnx_decomp.figures import plot_permuted_support, plot_weight_histogram

    paths = [stem.with_name(stem.name + "_hist.png"), stem.with_name(stem.name + "_support.png")]
    with staged_output(paths[0]) as staged:
        plot_weight_histogram(w.matrix, w.null, f"{w.ops[0].weight.name}: weights vs {w.choice.spec}", staged)
    with staged_output(paths[1]) as staged:
        plot_permuted_support(confirmed, plan, f"{w.ops[0].weight.name}: confirmed support, "
                              f"{len(plan.branches)} components", staged)
    return [str(p) for p in paths]


def _chain(first: LinearOp, second: LinearOp, p_by_weight: dict, fdr: float) -> ChainAnalysis:
    """Grouped-edge decision for one chain (criterion module rule), BH over the chain's edges."""
    p_edge = grouped_edge_p_values(p_by_weight[first.weight.name], p_by_weight[second.weight.name])
    cut = bh_threshold(p_edge[p_edge <= fdr], p_edge.size, fdr)
    confirmed = p_edge <= cut
    return ChainAnalysis(first.node.name, second.node.name, [second.shape[0], first.shape[0], first.shape[1]],
                         round(storey_pi0(p_edge), 6), round(float(confirmed.mean()), 6),
                         len(plan_from_support(confirmed).branches))
