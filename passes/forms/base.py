"""What a rewrite form is: a rule that may replace one planned weighted op by an equivalent subgraph."""

from __future__ import annotations

import abc
from typing import Optional

from ..builder import Builder
from ..ops import WeightedOp
from ..plan import BlockPlan, Plan


class Form(abc.ABC):
    """One way to execute a plan of kind ``plan_type``. Subclasses state their rewrite rule in the class
    docstring, and declare what keeping a chain of them in block layout saves per chained side
    (``chain_saves``: nodes and copies of the activations that ``KeepBlockLayout`` removes; None: the form does
    not chain)."""

    name: str
    plan_type: type = BlockPlan
    chain_saves: Optional[tuple[int, int]] = None

    def applies(self, op: WeightedOp, plan: Plan) -> Optional[str]:
        """Why this form cannot execute ``plan`` for ``op`` (its kind first, then ``check``); None when it can."""
        if not isinstance(plan, self.plan_type):
            return f"executes {self.plan_type.__name__}s, not {type(plan).__name__}s"
        return self.check(op, plan)

    @abc.abstractmethod
    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        """Why this form cannot execute ``plan`` for ``op``; None when it can."""

    @abc.abstractmethod
    def emit(self, builder: Builder, plan: BlockPlan) -> None:
        """Append to ``builder`` the nodes that compute ``builder.op``'s output under ``plan``; the last of
        them writes the node's original output tensor. A form that chains records where its activations
        enter and leave block layout (``Builder.entry``, ``Builder.exit``)."""
