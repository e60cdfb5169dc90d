"""What an annealing run tried and decided, rendered from its steps: console tables, JSON and its schema.

JSON (``anneal_schema``, JSON Schema draft 2020-12): ``model``, ``metric``, ``tolerance``, ``refit``,
``calibration`` (``source`` file/random, ``tuning`` and ``validation`` sample counts, ``validation_set``, what
the final fidelity was measured on), ``warnings``, ``units[]`` (``name``, ``kind``, ``weights``, ``rungs``),
``steps[]`` (``index``, ``unit``, ``structure``, ``macs`` of the model with the step in force, ``mac_reduction``
against dense, tuning ``fidelity``, ``verdict`` accepted/rolled back/deferred, ``reason``), ``final`` (MACs,
fidelity on tuning and validation data, with and without refit, and the exact check of the rewritten model
against the masked, refitted dense one), ``plans`` (per weight: the kind of plan, what it keeps, its MAC
reduction), ``stability[]``, ``left_out[]`` (``node``, ``reason``), ``decomposition`` (the exact path's report,
``report.decomposition``), ``figure``, ``notes``. Non-finite numbers are written as null.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import onnx

from onnx_decomp.config import METRICS
from onnx_decomp.decisions import Step, Verdict
from onnx_decomp.io.atomic import staged_output, write_json
from onnx_decomp.report.decomposition import Report
from onnx_decomp.report.table import table
from onnx_decomp_passes import BlockPlan, LowRankPlan, Plan, Site


def plan_json(plan: Plan) -> dict:
    """A plan in ``anneal.json``: its kind, what it keeps, its MAC reduction."""
    if isinstance(plan, BlockPlan):
        kept = {"kind": "blocks", "blocks": len(plan.branches), "constant_rows": int(len(plan.constant_rows)),
                "unused_inputs": int(len(plan.unused_cols))}
    elif isinstance(plan, LowRankPlan):
        kept = {"kind": "low rank", "rank": plan.rank}
    else:
        kept = {"kind": "units", "rows_kept": plan.kept[0], "cols_kept": plan.kept[1]}
    return {**kept, "mac_reduction": _finite(plan.flop_reduction)}


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


@dataclass
class Stability:
    """Whether an accepted partition persists across bootstrap resamples (``search.stability``):
    ``ari_mean``/``ari_min`` over resamples of the worse of inputs' and outputs' ARI; ``spaces``: the mean
    ARI of every index space (inputs, hidden N, outputs)."""

    unit: str
    structure: str
    resamples: int
    ari_mean: float
    ari_min: float
    stable: bool
    spaces: dict[str, float] = field(default_factory=dict)


@dataclass
class UnitInfo:
    name: str
    kind: str  # the family that made the unit (``search.families.FAMILIES``)
    weights: list[str]
    rungs: list[str]


@dataclass
class FinalFidelity:
    """The annealed model's cost and fidelity: ``validation`` is the rewritten model against the original on
    the validation set (the figure the run reports); ``validation_refit`` / ``validation_plain`` the masked
    dense model with refitted / plainly cut weights under the same plans; ``exact_*`` the rewritten model
    against the masked, refitted dense one, element by element."""

    dense_macs: int
    macs: int
    tuning: float
    validation: float
    validation_refit: float
    validation_plain: float
    exact_max_abs: float
    exact_ok: bool
    exact_rule: str

    @property
    def mac_reduction(self) -> float:
        return self.dense_macs / self.macs if self.macs else float("inf")


@dataclass
class AnnealReport:
    model: str
    metric: str
    tolerance: float
    refit: bool
    calibration: dict
    units: list[UnitInfo]
    steps: list[Step]
    dense_macs: int
    final: Optional[FinalFidelity] = None
    plans: dict[Site, Plan] = field(default_factory=dict)  # the plan in force at each cut site
    stability: list[Stability] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decomposition: Optional[Report] = None
    quantization: Optional[dict] = None  # scheme, what it costs alone on the tuning data, the structure's budget
    figure: Optional[str] = None
    masked: Optional[onnx.ModelProto] = field(default=None, repr=False)  # the masked, refitted dense model

    @property
    def accepted(self) -> list[Step]:
        return [s for s in self.steps if s.verdict is Verdict.ACCEPTED]

    def to_dict(self) -> dict:
        final = None
        if self.final is not None:
            final = {k: _finite(v) if isinstance(v, float) else v for k, v in asdict(self.final).items()}
            final["mac_reduction"] = _finite(self.final.mac_reduction)
        return {
            "model": self.model, "metric": self.metric, "tolerance": self.tolerance, "refit": self.refit,
            "calibration": dict(self.calibration), "warnings": list(self.warnings),
            "units": [asdict(u) for u in self.units],
            "steps": [{"index": i, "unit": s.candidate.unit, "structure": s.candidate.structure,
                       "macs": s.candidate.macs, "mac_reduction": _finite(self.dense_macs / max(s.candidate.macs, 1)),
                       "fidelity": _finite(s.candidate.fidelity), "verdict": s.verdict.value, "reason": s.reason}
                      for i, s in enumerate(self.steps, 1)],
            "final": final,
            "plans": {site.weight: plan_json(plan) for site, plan in self.plans.items()},
            "stability": [asdict(s) for s in self.stability],
            "left_out": [{"node": node, "reason": reason} for node, reason in self.left_out],
            "decomposition": None if self.decomposition is None else self.decomposition.to_dict(),
            "quantization": None if self.quantization is None else
            {k: _finite(v) if isinstance(v, float) else v for k, v in self.quantization.items()},
            "figure": self.figure, "notes": list(self.notes),
        }

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_json(path, self.to_dict())

    def write_folder(self, folder: Union[str, os.PathLike], final: Optional[Union[str, os.PathLike]] = None) -> None:
        """``folder/anneal.png`` (fidelity against MAC reduction) and ``folder/anneal.json``, each atomically;
        ``final``: where the folder will be once a staged write is committed (what ``figure`` records)."""
        from onnx_decomp.report.figures import plot_anneal_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        figure = folder / "anneal.png"
        with staged_output(figure) as staged:
            plot_anneal_path(self.steps, self.dense_macs, self.metric, self.tolerance,
                             f"annealing {Path(self.model).name}", staged)
        self.figure = str(Path(final or folder) / figure.name)
        self.write_json(folder / "anneal.json")

    def format(self) -> str:
        """Steps table, final summary, stability, the exact path's tables, warnings and notes."""
        lines = [f"WARNING: {w}" for w in self.warnings]
        lines.append(f"annealing {self.model}: {self.metric} <= {self.tolerance:g} on {self.calibration['tuning']} "
                     f"tuning samples, refit {'on' if self.refit else 'off'}; dense {self.dense_macs:,} MatMul MACs")
        if self.quantization is not None:
            q = self.quantization
            lines.append(f"quantization {q['scheme']} last: alone it costs {self.metric} {q['alone']:.4g} on the tuning "
                         f"samples, leaving the structure {q['budget']:.4g}")
        rows = [("#", "unit", "structure", "MACs", "MACs /", f"{self.metric} (tuning)", "verdict")]
        rows += [(i, s.candidate.unit, s.candidate.structure, f"{s.candidate.macs:,}",
                  f"{self.dense_macs / max(s.candidate.macs, 1):.2f}", f"{s.candidate.fidelity:.4g}",
                  s.verdict.value + (f" ({s.reason})" if s.reason and s.verdict is Verdict.ROLLED_BACK else ""))
                 for i, s in enumerate(self.steps, 1)]
        lines.append(table(rows) if self.steps else "no structure was tried")
        if self.final is not None:
            f = self.final
            lines += ["", f"annealed: {f.macs:,} MatMul MACs ({f.mac_reduction:.2f}x fewer); {self.metric} on "
                      f"{self.calibration['validation_set']} ({self.calibration['validation']} samples): "
                      f"{f.validation:.4g}" + (f" quantized, {self.quantization['unquantized']:.4g} before"
                                                 if self.quantization is not None else "") +
                      f" (refit {f.validation_refit:.4g}, plain cut {f.validation_plain:.4g}); tuning {f.tuning:.4g}",
                      f"rewritten vs masked dense model: max abs diff {f.exact_max_abs:.3g} "
                      f"({f.exact_rule}): {'ok' if f.exact_ok else 'MISMATCH'}"]
        if self.stability:
            lines += ["", "stability over bootstrap resamples (adjusted Rand index, worse of inputs and outputs):",
                      table([("unit", "structure", "resamples", "mean", "min", "stable", "per index space")] +
                            [(s.unit, s.structure, s.resamples, f"{s.ari_mean:.3f}", f"{s.ari_min:.3f}",
                              "yes" if s.stable else "no", ", ".join(f"{k} {v:.2f}" for k, v in s.spaces.items()))
                             for s in self.stability])]
        if self.decomposition is not None:
            lines += ["", "exact rewrite of the annealed model:", self.decomposition.format()]
        lines += [f"left out: {node} ({reason})" for node, reason in self.left_out]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


_NUMBER = {"type": ["number", "null"]}
def anneal_schema(kinds: Sequence[str]) -> dict:
    """The JSON Schema (draft 2020-12) of ``AnnealReport.to_dict``, units of the structure families ``kinds``
    (``drivers.anneal.ANNEAL_SCHEMA`` gives it the registered families)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["model", "metric", "tolerance", "refit", "calibration", "warnings", "units", "steps", "final",
                     "plans", "stability", "left_out", "decomposition", "figure", "notes"],
        "properties": {
            "model": {"type": "string"},
            "metric": {"enum": list(METRICS)},
            "tolerance": {"type": "number", "minimum": 0},
            "refit": {"type": "boolean"},
            "calibration": {"type": "object", "required": ["source", "tuning", "validation", "validation_set"],
                            "properties": {"source": {"enum": ["file", "random"]},
                                           "tuning": {"type": "integer", "minimum": 1},
                                           "validation": {"type": "integer", "minimum": 1},
                                           "validation_set": {"type": "string"}}},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "notes": {"type": "array", "items": {"type": "string"}},
            "units": {"type": "array", "items": {
                "type": "object", "required": ["name", "kind", "weights", "rungs"],
                "properties": {"kind": {"enum": list(kinds)},
                               "weights": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                               "rungs": {"type": "array", "items": {"type": "string"}}}}},
            "steps": {"type": "array", "items": {
                "type": "object",
                "required": ["index", "unit", "structure", "macs", "mac_reduction", "fidelity", "verdict", "reason"],
                "properties": {"index": {"type": "integer", "minimum": 1}, "macs": {"type": "integer", "minimum": 0},
                               "mac_reduction": _NUMBER, "fidelity": _NUMBER,
                               "verdict": {"enum": [v.value for v in Verdict]}, "reason": {"type": "string"}}}},
            "final": {"type": ["object", "null"], "required": [
                "dense_macs", "macs", "mac_reduction", "tuning", "validation", "validation_refit", "validation_plain",
                "exact_max_abs", "exact_ok", "exact_rule"],
                "properties": {"dense_macs": {"type": "integer"}, "macs": {"type": "integer"}, "mac_reduction": _NUMBER,
                               "tuning": _NUMBER, "validation": _NUMBER, "validation_refit": _NUMBER,
                               "validation_plain": _NUMBER, "exact_max_abs": _NUMBER, "exact_ok": {"type": "boolean"},
                               "exact_rule": {"type": "string"}}},
            "plans": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["kind", "mac_reduction"],
                "properties": {"kind": {"enum": ["blocks", "low rank", "units"]}}}},
            "stability": {"type": "array", "items": {
                "type": "object",
                "required": ["unit", "structure", "resamples", "ari_mean", "ari_min", "stable", "spaces"],
                "properties": {"ari_mean": _NUMBER, "ari_min": _NUMBER, "stable": {"type": "boolean"},
                               "spaces": {"type": "object", "additionalProperties": {"type": "number"}}}}},
            "left_out": {"type": "array", "items": {"type": "object", "required": ["node", "reason"]}},
            "decomposition": {"type": ["object", "null"]},
            "quantization": {"type": ["object", "null"], "required": ["scheme", "alone", "budget", "unquantized"],
                             "properties": {"scheme": {"type": "string"}, "alone": _NUMBER, "budget": _NUMBER,
                                            "unquantized": _NUMBER}},
            "figure": {"type": ["string", "null"]},
        },
    }
