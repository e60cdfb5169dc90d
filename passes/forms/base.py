"""What a rewrite form is: a rule that may replace one planned MatMul/Gemm by an equivalent subgraph."""

from __future__ import annotations

import abc
from typing import Optional

from ..builder import Builder
from ..ops import WeightedOp
from ..plan import BlockPlan


class Form(abc.ABC):
    """One way to execute a block plan. Subclasses state their rewrite rule in the class docstring."""

    name: str

    @abc.abstractmethod
    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        """Why this form cannot execute ``plan`` for ``op``; None when it can."""

    @abc.abstractmethod
    def emit(self, builder: Builder, plan: BlockPlan) -> None:
        """Append to ``builder`` the nodes that compute ``builder.op``'s output under ``plan``; the last of
        them writes the node's original output tensor."""
