"""Pass infrastructure: a pass checks what it needs, rewrites, and checks what it promises.

After onnx-ir's ``_pass_infra`` and torch.fx ``passes/infra``: ``Pass.__call__`` runs
``requires -> call -> ensures`` and returns a ``PassResult`` whose ``artifact`` carries what the pass decided
(typed per pass: folding's relabellings and refusals, the rewrite's emitted nodes). ``PassManager`` runs passes
in order, optionally checks the graph after each one, and wraps a ``PassError`` with the pass that raised it and
the passes run before it, keeping the original as its cause.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PassError(Exception):
    """A pass found its precondition or postcondition broken."""


@dataclass
class PassResult(Generic[T]):
    """The graph after a pass, whether it changed, and what the pass decided (``None`` when nothing to say)."""

    graph: gs.Graph
    modified: bool
    artifact: Optional[T] = None


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


@dataclass
class ManagerArtifacts:
    """Each pass's artifact, by pass class name, in the order they ran."""

    by_pass: dict[str, Any] = field(default_factory=dict)


class PassManager(Pass):
    """Runs ``passes`` in order; the graph is modified when any pass modified it. ``check`` (e.g. a graph
    validator) runs after every pass; a ``PassError`` from a pass or its check is raised again as
    ``"<Pass>: <message> (after <passes run before>)"`` with the original as its cause."""

    def __init__(self, passes: Sequence[Pass], check: Optional[Callable[[gs.Graph], None]] = None):
        self.passes, self.check = list(passes), check

    def call(self, graph: gs.Graph) -> PassResult[ManagerArtifacts]:
        modified, artifacts, done = False, ManagerArtifacts(), []
        for one_pass in self.passes:
            name = type(one_pass).__name__
            try:
                result = one_pass(graph)
                if self.check is not None:
                    self.check(result.graph)
            except PassError as error:
                after = f" (after {', '.join(done)})" if done else ""
                raise PassError(f"{name}: {error}{after}") from error
            graph = result.graph
            logger.debug("%s: modified=%s", name, result.modified)
            modified |= result.modified
            artifacts.by_pass[name] = result.artifact
            done.append(name)
        return PassResult(graph, modified, artifacts)
