"""Decisions as data: what was proposed for each MatMul/Gemm, what it would cost, and what was decided.

Reports and JSON are rendered from these (``report``); drivers act on ``Decision.rewrite`` alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

from onnx_decomp_passes import BlockPlan, LinearOp, Skipped


class Action(str, enum.Enum):
    REWRITE = "rewrite"  # the candidate passed the gate
    KEEP = "keep"  # rewritable, but no gain: left dense
    SKIP = "skip"  # not rewritable (unsupported construct)


@dataclass(frozen=True)
class Candidate:
    """A block plan proposed for one op, the fraction of its weight's entries that are nonzero, and its
    measured speedup once timed (dense time / rewritten time of the node alone)."""

    op: LinearOp
    plan: BlockPlan
    density: float
    speedup: Optional[float] = None

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input vector of the rewritten op."""
        return self.plan.macs

    @property
    def flop_reduction(self) -> float:
        return self.plan.flop_reduction

    def timed(self, speedup: float) -> "Candidate":
        return replace(self, speedup=speedup)


@dataclass(frozen=True)
class Decision:
    """The action taken on one op and why; ``candidate`` is the plan it was judged on (None when skipped
    before planning)."""

    subject: Union[LinearOp, Skipped]
    action: Action
    reason: str = ""
    candidate: Optional[Candidate] = None

    @property
    def rewrite(self) -> bool:
        return self.action is Action.REWRITE

    @property
    def node(self) -> str:
        return self.subject.node_name


def plans_to_apply(decisions: Sequence[Decision]) -> dict[str, BlockPlan]:
    """Node name -> plan, for every decision to rewrite."""
    return {d.node: d.candidate.plan for d in decisions if d.rewrite}
