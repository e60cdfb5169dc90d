"""Square operators whose input and output share one index space: the paper's directed view.

A residual-stream map ``x + W x`` or a recurrent weight reads and writes the same features, so its support
``S [n, n]`` is a directed graph on one set of nodes: entry ``(i, j)`` is the edge ``j -> i`` (output ``i``
reads input ``j``; design.md section 4).

Rules:
1. Strongly connected components: ``scipy.sparse.csgraph.connected_components(connection="strong")``
   (Tarjan, linear in the edges; not Boolean matrix powers).
2. Condensation: components are nodes, with an edge ``C -> D`` when an edge of ``S`` leads from C into D; it
   is acyclic. The level of a component is the length of the longest path reaching it from a source of the
   condensation (sources are level 0), so every edge goes from a lower level to a higher one and ordering
   the index space by (level, component) makes ``S`` block lower-triangular.
3. Weakly connected components (``connection="weak"``) read nothing of each other: block-diagonal.
4. Plan: one branch per (weak component, level); its rows are that component's indices at that level, its
   columns every index those rows read in ``S`` (their own level's components and their predecessors'), so
   branches may read overlapping columns (the general block-sparse form). Rows that read nothing are
   constant rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from onnx_decomp_passes import BlockPlan, Branch


@dataclass(frozen=True)
class DirectedStructure:
    """The directed view of one square support: per index its strong component, that component's level,
    and its weak component; ``plan`` per rule 4."""

    strong: np.ndarray  # [n] strong component label of every index
    levels: np.ndarray  # [n] level of every index's strong component
    weak: np.ndarray  # [n] weak component label of every index
    plan: BlockPlan

    def order(self) -> np.ndarray:
        """A permutation of the index space (level, then strong component) under which ``S`` is block
        lower-triangular."""
        return np.lexsort((np.arange(len(self.strong)), self.strong, self.levels))


def component_levels(source: np.ndarray, target: np.ndarray, count: int) -> np.ndarray:
    """Level of every strong component (rule 2) given the edges ``source[e] -> target[e]`` between
    component labels: Kahn's topological sweep of the condensation, each component one past the highest
    level among its predecessors."""
    between = source != target
    edges = np.unique(np.stack([source[between], target[between]], axis=1), axis=0)
    successors = csr_matrix((np.ones(len(edges), bool), (edges[:, 0], edges[:, 1])), shape=(count, count))
    waiting = np.bincount(edges[:, 1], minlength=count)
    levels = np.zeros(count, dtype=np.int64)
    ready = list(np.flatnonzero(waiting == 0))
    while ready:
        component = ready.pop()
        for successor in successors.indices[successors.indptr[component]:successors.indptr[component + 1]]:
            levels[successor] = max(levels[successor], levels[component] + 1)
            waiting[successor] -= 1
            if waiting[successor] == 0:
                ready.append(successor)
    return levels


def directed_structure(support: np.ndarray) -> DirectedStructure:
    """The module rules applied to the square Boolean ``support [n, n]``."""
    support = np.asarray(support, dtype=bool)
    if support.ndim != 2 or support.shape[0] != support.shape[1]:
        raise ValueError(f"the directed view needs a square support, got shape {support.shape}")
    n = support.shape[0]
    rows, cols = np.nonzero(support)
    graph = csr_matrix((np.ones(len(rows), bool), (cols, rows)), shape=(n, n))  # edge j -> i
    count, strong = connected_components(graph, directed=True, connection="strong")
    _, weak = connected_components(graph, directed=True, connection="weak")
    levels = component_levels(strong[cols], strong[rows], count)[strong]
    branches, constant = [], []
    groups: dict[tuple[int, int], list[int]] = {}
    for index in range(n):
        groups.setdefault((weak[index], levels[index]), []).append(index)
    for members in groups.values():  # ordered by their first index
        members = np.asarray(members)
        live = members[support[members].any(axis=1)]
        constant.extend(np.setdiff1d(members, live).tolist())
        if len(live):
            branches.append(Branch(live, np.flatnonzero(support[live].any(axis=0))))
    return DirectedStructure(strong, levels, weak, BlockPlan(n, n, tuple(branches), np.asarray(constant)))
