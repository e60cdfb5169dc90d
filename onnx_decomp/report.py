"""What a run found and did: per-node decisions, before/after sizes, validation; as a table or JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

from onnx_decomp.atomic import write_text
from onnx_decomp.model_stats import ModelStats
from onnx_decomp.runtime import ValidationResult

REWRITE, KEEP, SKIP = "rewrite", "keep", "skip"


@dataclass
class NodeReport:
    """One MatMul/Gemm with a constant operand. ``action``: rewrite, keep (no gain) or skip (unsupported)."""

    node: str
    op_type: str
    graph: str
    action: str
    reason: str = ""
    weight: str = ""
    shape: Optional[list[int]] = None  # [n_out, n_in]
    density: Optional[float] = None
    blocks: Optional[int] = None
    constant_outputs: Optional[int] = None
    unused_inputs: Optional[int] = None
    flop_reduction: Optional[float] = None
    speedup: Optional[float] = None  # measured dense/rewritten time of the node alone (gate "time")


@dataclass
class Report:
    model: str
    nodes: list[NodeReport]
    before: ModelStats
    after: Optional[ModelStats] = None
    validation: Optional[ValidationResult] = None
    notes: list[str] = field(default_factory=list)

    @property
    def planned(self) -> list[NodeReport]:
        return [n for n in self.nodes if n.action == REWRITE]

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.validation is not None:
            data["validation"]["ok"] = self.validation.ok
        return data

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2, default=float) + "\n")

    def format(self) -> str:
        """The console view: node table, before/after table, validation table, notes."""
        def fmt(value, spec=""):
            return "-" if value is None else format(value, spec)

        rows = [("node", "op", "weight", "shape", "density", "blocks", "const", "unused", "MACs/", "speedup",
                 "action")]
        for n in self.nodes:
            rows.append((n.node, n.op_type, n.weight or "-", "x".join(map(str, n.shape)) if n.shape else "-",
                         fmt(n.density, ".3f"), fmt(n.blocks), fmt(n.constant_outputs),
                         fmt(n.unused_inputs), fmt(n.flop_reduction, ".1f"), fmt(n.speedup, ".2f"),
                         n.action + (f" ({n.reason})" if n.reason else "")))
        lines = [table(rows) if self.nodes else "no MatMul/Gemm with a constant weight"]
        stats = [("", "before") + (("after",) if self.after else ())]
        for label, key in (("nodes", "nodes"), ("params", "params"), ("MatMul FLOPs", "matmul_flops")):
            stats.append((label, f"{getattr(self.before, key):,}") +
                         ((f"{getattr(self.after, key):,}",) if self.after else ()))
        lines += ["", table(stats)]
        if self.validation is not None:
            v = self.validation
            lines += ["", f"validation on {v.device}, {v.runs} input set(s), {v.tolerance.describe()}:",
                      table([("output", "max abs diff", "max rel diff", "rel L2", "ok")] +
                            [(d.name, f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.rel_l2:.3g}",
                              "yes" if d.ok else "NO") for d in v.outputs])]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
