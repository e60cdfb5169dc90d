"""What the statistical analysis found, per weight and per chain: data, console table, JSON and its schema.

A Conv weight is reported as ``kind="conv"`` with its ``groups``, kernel ``window`` and ``channels``
``[C_out, C_in]``; its components, constant outputs and unused inputs are over channels (the confirmed
channel-pair support), with ``channel_pi0`` and ``channel_confirmed_density`` over the pairs a group holds.
For MatMul/Gemm (``kind="linear"``) features are entries and the channel fields are null. ``by_kind``
pools tensors by layer kind (``layer_kind``), weighting pi0 and densities by entries (pairs).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Union

import numpy as np

from onnx_decomp.config import FDR_SCOPES
from onnx_decomp.io.atomic import write_json
from onnx_decomp.report.table import table


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
    kind: str = "linear"  # linear (MatMul/Gemm) or conv
    groups: int = 1
    window: list[int] = field(default_factory=list)  # a Conv's kernel size, [] for MatMul/Gemm
    channels: Optional[list[int]] = None  # [C_out, C_in]
    channel_pi0: Optional[float] = None
    channel_confirmed_density: Optional[float] = None


def layer_kind(t: TensorAnalysis) -> str:
    """``linear``, or a Conv's kind: ``depthwise`` (one input channel per group), ``grouped``, ``conv 1x1``,
    ``conv kxk`` (any larger window)."""
    if t.kind == "linear":
        return "linear"
    if t.groups > 1:
        return "depthwise" if t.shape[1] == int(np.prod(t.window)) else "grouped"
    return "conv 1x1" if int(np.prod(t.window)) == 1 else "conv kxk"


@dataclass
class KindSummary:
    kind: str
    tensors: int
    entries: int
    pi0: float
    confirmed_density: float
    channel_confirmed_density: Optional[float]


def summarize(tensors: list[TensorAnalysis]) -> list[KindSummary]:
    """Tensors pooled by ``layer_kind``: pi0 and densities weighted by entries (channel pairs)."""
    found = []
    for kind in dict.fromkeys(map(layer_kind, tensors)):
        chosen = [t for t in tensors if layer_kind(t) == kind]
        entries = np.array([t.shape[0] * t.shape[1] for t in chosen])
        pairs = entries // [max(1, int(np.prod(t.window))) for t in chosen]
        channel = None if kind == "linear" else round(float(np.average(
            [t.channel_confirmed_density for t in chosen], weights=pairs)), 6)
        found.append(KindSummary(kind, len(chosen), int(entries.sum()),
                                 round(float(np.average([t.pi0 for t in chosen], weights=entries)), 6),
                                 round(float(np.average([t.confirmed_density for t in chosen], weights=entries)), 6),
                                 channel))
    return found


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
    evidence: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # weight -> [n_out, n_in] in [0, 1]
    nulls: dict[str, object] = field(default_factory=dict, repr=False)  # weight -> its null model (with evidence)
    channel_masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # conv -> [C_out, C_in]
    channel_evidence: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # conv -> [C_out, C_in]

    def to_dict(self) -> dict:
        arrays = ("masks", "evidence", "nulls", "channel_masks", "channel_evidence")
        data = asdict(replace(self, **{name: {} for name in arrays}))  # asdict would deep-copy the arrays
        for name in arrays:
            del data[name]
        data["by_kind"] = [asdict(s) for s in summarize(self.tensors)]
        return data

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_json(path, self.to_dict())

    def format(self) -> str:
        rows = [("weight", "kind", "shape", "null", "source", "pi0", "confirmed", "pairs", "components", "const",
                 "unused", "FLOP share")]
        rows += [(t.weight, layer_kind(t), "x".join(map(str, t.shape)), t.null, t.null_source, f"{t.pi0:.3f}",
                  f"{t.confirmed_density:.4f}", _number(t.channel_confirmed_density), t.components,
                  t.constant_outputs, t.unused_inputs, f"{t.flop_share:.3f}") for t in self.tensors]
        lines = [f"FDR q={self.fdr:g} per {self.fdr_scope}",
                 table(rows) if self.tensors else "no MatMul/Gemm/Conv with a constant weight"]
        if len({layer_kind(t) for t in self.tensors}) > 1:
            lines += ["", "by kind (weighted by entries):", table(
                [("kind", "tensors", "entries", "pi0", "confirmed", "pairs")] +
                [(s.kind, s.tensors, s.entries, f"{s.pi0:.3f}", f"{s.confirmed_density:.4f}",
                  _number(s.channel_confirmed_density)) for s in summarize(self.tensors)])]
        if self.chains:
            lines += ["", "grouped edges (chains W2 . act . W1):", table(
                [("first", "second", "d_out x h x d_in", "pi0", "confirmed", "components")] +
                [(c.first, c.second, "x".join(map(str, c.shape)), f"{c.pi0:.3f}", f"{c.confirmed_density:.4f}",
                  c.components) for c in self.chains])]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_OPTIONAL_FRACTION = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
ANALYSIS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["model", "fdr", "fdr_scope", "tensors", "chains", "notes", "by_kind"],
    "properties": {
        "model": {"type": "string"},
        "fdr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "fdr_scope": {"enum": list(FDR_SCOPES)},
        "notes": {"type": "array", "items": {"type": "string"}},
        "tensors": {"type": "array", "items": {
            "type": "object",
            "required": ["weight", "nodes", "shape", "null", "null_source", "pi0", "confirmed_density",
                         "components", "constant_outputs", "unused_inputs", "flop_share", "figures", "kind",
                         "groups", "window", "channels", "channel_pi0", "channel_confirmed_density"],
            "properties": {
                "weight": {"type": "string"},
                "nodes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                          "maxItems": 2},
                "null": {"type": "string"},
                "null_source": {"enum": ["metadata", "user", "guess"]},
                "pi0": _FRACTION,
                "confirmed_density": _FRACTION,
                "components": {"type": "integer", "minimum": 0},
                "constant_outputs": {"type": "integer", "minimum": 0},
                "unused_inputs": {"type": "integer", "minimum": 0},
                "flop_share": {"type": "number", "minimum": 0, "maximum": 1},
                "figures": {"type": "array", "items": {"type": "string"}},
                "kind": {"enum": ["linear", "conv"]},
                "groups": {"type": "integer", "minimum": 1},
                "window": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "channels": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                             "maxItems": 2},
                "channel_pi0": _OPTIONAL_FRACTION,
                "channel_confirmed_density": _OPTIONAL_FRACTION,
            }}},
        "by_kind": {"type": "array", "items": {
            "type": "object",
            "required": ["kind", "tensors", "entries", "pi0", "confirmed_density", "channel_confirmed_density"],
            "properties": {"kind": {"enum": ["linear", "conv 1x1", "conv kxk", "depthwise", "grouped"]},
                           "tensors": {"type": "integer", "minimum": 1}, "entries": {"type": "integer", "minimum": 1},
                           "pi0": _FRACTION, "confirmed_density": _FRACTION,
                           "channel_confirmed_density": _OPTIONAL_FRACTION}}},
        "chains": {"type": "array", "items": {
            "type": "object",
            "required": ["first", "second", "shape", "pi0", "confirmed_density", "components"],
            "properties": {"shape": {"type": "array", "items": {"type": "integer"}, "minItems": 3,
                                     "maxItems": 3},
                           "pi0": _FRACTION,
                           "confirmed_density": _FRACTION}}},
    },
}
