"""Decisions as data: what was proposed for each MatMul/Gemm, what it would cost, and what was decided;
for annealing, every structure tried with its measured fidelity and what became of it.

Reports and JSON are rendered from these (``report``); drivers act on ``Decision.rewrite`` alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, Optional, Union

from onnx_decomp_passes import BlockPlan, Folding, Site, Skipped, WeightedOp


class Action(str, enum.Enum):
    REWRITE = "rewrite"  # the candidate passed the gate
    KEEP = "keep"  # rewritable, but no gain: left dense
    SKIP = "skip"  # not rewritable (unsupported construct)


@dataclass(frozen=True)
class FormCost:
    """One rewrite form of one candidate at one batch size (None: the input shapes as given): dense time /
    rewritten time of the node alone, estimated by the cost model and, once timed, measured."""

    form: str
    batch: Optional[int]
    estimated: float
    measured: Optional[float] = None


@dataclass(frozen=True)
class Candidate:
    """A block plan proposed for one op and the fraction of its weight's entries that are nonzero; once a form
    is chosen (``planning.forms``): the form, the plan in the feature order permutation folding gives it
    (``folded``, what runs), the cost of every form looked at, and the measured speedup the gate judges (the
    worst over the batch sizes)."""

    op: WeightedOp
    plan: BlockPlan
    density: float
    speedup: Optional[float] = None
    form: Optional[str] = None
    folded: Optional[BlockPlan] = None
    costs: tuple[FormCost, ...] = ()

    @property
    def estimated(self) -> Optional[float]:
        """The chosen form's worst estimated speedup over the batch sizes (None before a choice)."""
        values = [c.estimated for c in self.costs if c.form == self.form]
        return min(values) if values else None

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input vector of the rewritten op."""
        return self.plan.macs

    @property
    def flop_reduction(self) -> float:
        return self.plan.flop_reduction



@dataclass(frozen=True)
class Decision:
    """The action taken on one op and why; ``candidate`` is the plan it was judged on (None when skipped
    before planning)."""

    subject: Union[WeightedOp, Skipped]
    action: Action
    reason: str = ""
    candidate: Optional[Candidate] = None

    @property
    def rewrite(self) -> bool:
        return self.action is Action.REWRITE

    @property
    def node(self) -> str:
        return self.subject.node_name


@dataclass
class Planning:
    """Every op's decision, and the feature relabelling (``Folding``) the chosen forms were judged under: the
    rewrite applies exactly it, restricted to the sites it rewrites, and emits each site's folded plan."""

    decisions: list[Decision]
    folding: Folding

    def rewrites(self) -> dict[Site, Candidate]:
        """Site -> its candidate, for every decision to rewrite."""
        return {d.subject.site: d.candidate for d in self.decisions if d.rewrite}


class Verdict(str, enum.Enum):
    """What became of one annealing step."""

    ACCEPTED = "accepted"  # within the tolerance and the best MACs saved per fidelity lost: kept
    ROLLED_BACK = "rolled back"  # broke the tolerance: undone
    DEFERRED = "deferred"  # within the tolerance, but another step saved more per fidelity lost first


@dataclass(frozen=True)
class StructureCandidate:
    """A structure proposed for one annealing unit (weights planned together with one partition): its plan
    for every weight of the unit, the model's MatMul MACs per inference with it in force, and the fidelity
    measured in ONNX Runtime on the tuning data with it applied (lower is better)."""

    unit: str
    structure: str  # e.g. "k=4", "trim", "scc 10%"
    plans: Mapping[str, BlockPlan]  # weight (initializer) name -> plan
    macs: int
    fidelity: float


@dataclass(frozen=True)
class Step:
    """One annealing step: the candidate tried, what became of it, and why."""

    candidate: StructureCandidate
    verdict: Verdict
    reason: str = ""
