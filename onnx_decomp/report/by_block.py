"""What a block-by-block annealing run did (``drivers.by_block``): one row per block, the end-to-end result
against the whole budget, as a console table and JSON.

JSON: ``model``, ``metric``, ``tolerance`` (the whole budget), ``stream_metric`` and ``stream_tolerance`` (the
budget between blocks), ``calibration``, ``blocks[]`` (``index``, ``layers``, ``inputs``, ``outputs``,
``weight_bytes``, ``metric``, ``tolerance`` (its share: the cumulative ramp), ``tuning`` and ``validation``
fidelity at its output against the original model, ``dense_macs``, ``macs``, ``accepted`` structures,
``seconds``, ``peak_rss_bytes`` of the process when it was done), ``final`` (the end-to-end fidelity on tuning
and validation data with refit and plainly cut, ``dense_macs``, ``macs``, ``mac_reduction``, ``within_budget``),
``plans`` (per weight, as ``anneal.json``), ``warnings``, ``notes``. Non-finite numbers are null.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Union

from onnx_decomp.io.atomic import write_json
from onnx_decomp.report.anneal import _finite, plan_json
from onnx_decomp.report.table import table
from onnx_decomp_passes import Plan, Site


@dataclass
class BlockSummary:
    index: int
    layers: list[str]
    inputs: list[str]
    outputs: list[str]
    weight_bytes: int
    metric: str
    tolerance: float
    tuning: float
    validation: float
    dense_macs: int
    macs: int
    accepted: list[str]
    seconds: float
    peak_rss_bytes: int


@dataclass
class ByBlockReport:
    """The run (module docstring); ``plans``: every cut weight's plan, keyed by ``Site`` as ``AnnealReport``'s."""

    model: str
    metric: str
    tolerance: float
    stream_metric: str
    stream_tolerance: float
    calibration: dict
    blocks: list[BlockSummary] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    plans: dict[Site, Plan] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[str]:
        return [label for block in self.blocks for label in block.accepted]

    def to_dict(self) -> dict:
        blocks = [{k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(block).items()}
                  for block in self.blocks]
        return {"model": self.model, "metric": self.metric, "tolerance": self.tolerance,
                "stream_metric": self.stream_metric, "stream_tolerance": _finite(self.stream_tolerance),
                "calibration": self.calibration, "blocks": blocks,
                "final": {k: (_finite(v) if isinstance(v, float) else v) for k, v in self.final.items()},
                "plans": {site.weight: plan_json(plan) for site, plan in self.plans.items()},
                "warnings": self.warnings, "notes": self.notes}

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_json(path, self.to_dict())

    def format(self) -> str:
        rows = [("block", "layers", "weights MiB", "budget", "tuning", "validation", "MACs fewer", "steps accepted",
                 "s", "peak RSS MiB")]
        rows += [(b.index, len(b.layers), f"{b.weight_bytes / 2**20:.1f}", f"{b.metric} {b.tolerance:.4g}",
                  f"{b.tuning:.4g}", f"{b.validation:.4g}", f"{b.dense_macs / max(b.macs, 1):.2f}x",
                  len(b.accepted), f"{b.seconds:.1f}", f"{b.peak_rss_bytes / 2**20:.0f}")
                 for b in self.blocks]
        final = self.final
        lines = [f"block-by-block annealing of {self.model}: {len(self.blocks)} blocks, budget {self.metric} <= "
                 f"{self.tolerance:g} end to end ({self.stream_metric} <= {self.stream_tolerance:g} ramped over "
                 "the cuts)", table(rows), "",
                 f"end to end: {self.metric} tuning {final.get('tuning', float('nan')):.4g}, validation "
                 f"{final.get('validation', float('nan')):.4g} (plain cut {final.get('validation_plain', float('nan')):.4g})"
                 f" against the budget {self.tolerance:g}; MatMul MACs {final.get('mac_reduction', 1.0):.2f}x fewer"]
        lines += [f"warning: {w}" for w in self.warnings] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
