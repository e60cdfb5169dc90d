"""What a decompose or inspect run found and did, rendered from its decisions: a console table or JSON."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Union

from onnx_decomp.cost.model_stats import ModelStats
from onnx_decomp.decisions import Decision
from onnx_decomp.io.atomic import write_json
from onnx_decomp.report.table import table
from onnx_decomp.runtime.validation import ValidationResult
from onnx_decomp_passes import BlockPlan, LowRankPlan, Plan, WeightedOp


def plan_summary(plan: Plan) -> dict:
    """What a report says of a plan besides its MACs: blocks, constant outputs and unused inputs of a block
    plan, the rank of a low-rank one."""
    if isinstance(plan, BlockPlan):
        return {"blocks": len(plan.branches), "constant_outputs": int(len(plan.constant_rows)),
                "unused_inputs": int(len(plan.unused_cols))}
    return {"rank": plan.rank} if isinstance(plan, LowRankPlan) else {}


def validation_lines(v: ValidationResult) -> list[str]:
    """The console view of a validation: where and on what it ran, the tolerance, a row per output."""
    edges = f" (the first also at batch {', '.join(map(str, v.edge_batches))})" if v.edge_batches else ""
    return [f"validation on {v.device}, {v.runs} input set(s){edges}, {v.tolerance.describe()}:",
            table([("output", "max abs diff", "max rel diff", "rel L2", "ok")] +
                  [(d.name, f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.rel_l2:.3g}", "yes" if d.ok else "NO")
                   for d in v.outputs])]


@dataclass(frozen=True)
class NodeReport:
    """One row: a MatMul/Gemm with a constant operand. ``action``: rewrite, keep (no gain) or skip
    (unsupported)."""

    node: str
    op_type: str
    graph: str
    action: str
    reason: str = ""
    weight: str = ""
    shape: Optional[list[int]] = None  # [n_out, n_in]
    density: Optional[float] = None
    blocks: Optional[int] = None
    rank: Optional[int] = None  # a low-rank plan's
    constant_outputs: Optional[int] = None
    unused_inputs: Optional[int] = None
    flop_reduction: Optional[float] = None
    speedup: Optional[float] = None  # measured dense/rewritten time of the node alone (gate "time"), worst batch
    form: Optional[str] = None  # the rewrite form chosen (planning.forms)
    estimated: Optional[float] = None  # the cost model's speedup of that form, worst batch
    costs: Optional[list[dict]] = None  # every form looked at, per batch size: estimated and measured speedup

    @classmethod
    def of(cls, decision: Decision) -> "NodeReport":
        subject, candidate = decision.subject, decision.candidate
        row = cls(subject.node_name, subject.op_type, subject.graph_name, decision.action.value, decision.reason)
        if isinstance(subject, WeightedOp):
            row = replace(row, weight=subject.weight.name, shape=list(subject.shape))
        if candidate is not None:
            plan = candidate.plan
            row = replace(row, **plan_summary(plan))
            row = replace(row, density=candidate.density, flop_reduction=round(plan.flop_reduction, 3),
                        speedup=None if candidate.speedup is None else round(candidate.speedup, 3),
                        form=candidate.form,
                        estimated=None if candidate.estimated is None else round(candidate.estimated, 3),
                        costs=[{**asdict(c), "estimated": round(c.estimated, 3),
                                "measured": None if c.measured is None else round(c.measured, 3)}
                               for c in candidate.costs] or None)
        return row


@dataclass
class Report:
    model: str
    decisions: list[Decision]
    before: ModelStats
    after: Optional[ModelStats] = None
    validation: Optional[ValidationResult] = None
    notes: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[NodeReport]:
        return [NodeReport.of(d) for d in self.decisions]

    @property
    def planned(self) -> list[Decision]:
        """The decisions to rewrite."""
        return [d for d in self.decisions if d.rewrite]

    def to_dict(self) -> dict:
        validation = None
        if self.validation is not None:
            validation = {**asdict(self.validation), "ok": self.validation.ok}
        return {"model": self.model, "nodes": [asdict(n) for n in self.nodes], "before": asdict(self.before),
                "after": None if self.after is None else asdict(self.after), "validation": validation,
                "notes": list(self.notes)}

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_json(path, self.to_dict())

    def format(self) -> str:
        """The console view: node table, before/after table, validation table, notes."""
        def fmt(value, spec=""):
            return "-" if value is None else format(value, spec)

        nodes = self.nodes
        rows = [("node", "op", "weight", "shape", "density", "blocks", "const", "unused", "MACs/", "form",
                 "est.", "speedup", "action")]
        for n in nodes:
            rows.append((n.node, n.op_type, n.weight or "-", "x".join(map(str, n.shape)) if n.shape else "-",
                         fmt(n.density, ".3f"), fmt(n.blocks) if n.rank is None else f"r={n.rank}",
                         fmt(n.constant_outputs),
                         fmt(n.unused_inputs), fmt(n.flop_reduction, ".1f"), fmt(n.form), fmt(n.estimated, ".2f"),
                         fmt(n.speedup, ".2f"),
                         n.action + (f" ({n.reason})" if n.reason else "")))
        lines = [table(rows) if nodes else "no MatMul/Gemm with a constant weight"]
        stats = [("", "before") + (("after",) if self.after else ())]
        for label, key in (("nodes", "nodes"), ("params", "params"), ("MatMul FLOPs", "matmul_flops")):
            stats.append((label, f"{getattr(self.before, key):,}") +
                         ((f"{getattr(self.after, key):,}",) if self.after else ()))
        lines += ["", table(stats)]
        if self.validation is not None:
            lines += ["", *validation_lines(self.validation)]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)
