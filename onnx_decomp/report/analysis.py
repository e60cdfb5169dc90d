"""What the statistical analysis found, per weight and per chain: data, console table, JSON and its schema."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Union

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

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["masks"], data["evidence"]
        return data

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_json(path, self.to_dict())

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
