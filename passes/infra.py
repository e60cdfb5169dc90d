"""Pass infrastructure: a pass checks what it needs, rewrites, and checks what it promises.

After onnx-ir's ``_pass_infra`` and torch.fx ``passes/infra``: ``Pass.__call__`` runs
``requires -> call -> ensures`` and returns a ``PassResult``; ``PassManager`` runs passes in order.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Sequence

import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)


class PassError(Exception):
    """A pass found its precondition or postcondition broken."""


@dataclass
class PassResult:
    graph: gs.Graph
    modified: bool


class Pass(abc.ABC):
    """One graph transformation. Subclasses state their rewrite rule in the class docstring."""

    def requires(self, graph: gs.Graph) -> None:
        """Raise ``PassError`` when the graph is not fit for this pass."""

    @abc.abstractmethod
    def call(self, graph: gs.Graph) -> PassResult:
        """Rewrite ``graph`` (in place or not) and say whether anything changed."""

    def ensures(self, graph: gs.Graph) -> None:
        """Raise ``PassError`` when the pass broke its promise."""

    def __call__(self, graph: gs.Graph) -> PassResult:
        self.requires(graph)
        result = self.call(graph)
        self.ensures(result.graph)
        return result


class PassManager(Pass):
    """Runs ``passes`` in order; the graph is modified when any pass modified it."""

    def __init__(self, passes: Sequence[Pass]):
        self.passes = list(passes)

    def call(self, graph: gs.Graph) -> PassResult:
        modified = False
        for one_pass in self.passes:
            result = one_pass(graph)
            graph = result.graph
            logger.debug("%s: modified=%s", type(one_pass).__name__, result.modified)
            modified |= result.modified
        return PassResult(graph, modified)
