"""Plans: what the rewrite of one weighted op must compute. ``Plan`` is what every kind shares (the weight's
``[n_out, n_in]`` and the multiply-accumulates it leaves); ``BlockPlan`` is the block kind: which outputs of
one weight form which independent branch, and what each branch reads.

Orientation: a plan speaks of the weight as the linear map ``y = W x`` with ``W`` of shape
``[n_out, n_in]``. *Rows* are output features, *columns* are input features. ONNX stores the same weight
as ``B[K, N] = W.T`` for MatMul and Gemm(transB=0), and as ``B[N, K] = W`` for Gemm(transB=1).

A plan is a mask: the rewritten operator computes, for every branch, its rows from its columns only, so
any weight entry outside ``(branch.rows x branch.cols)`` of its row's branch is treated as zero. Rows in
``constant_rows`` read nothing: their output is the bias (or zero).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components


def _index_array(values) -> np.ndarray:
    array = np.unique(np.asarray(values, dtype=np.int64))
    array.setflags(write=False)
    return array


class Plan(abc.ABC):
    """What one weighted op's rewrite computes, of any kind; forms say which kind they execute."""

    n_out: int
    n_in: int

    @property
    @abc.abstractmethod
    def macs(self) -> int:
        """Multiply-accumulates per input vector of the rewritten operator."""

    @property
    def dense_macs(self) -> int:
        return self.n_out * self.n_in

    @property
    def flop_reduction(self) -> float:
        """Dense work divided by the rewritten work (infinite when nothing is read)."""
        return self.dense_macs / self.macs if self.macs else float("inf")


@dataclass(frozen=True)
class Branch:
    """One independent sub-operator: output ``rows`` computed from input ``cols`` (sorted, unique); ``block``
    is its id, kept when the plan's features are relabelled (None: numbered by position in its plan)."""

    rows: np.ndarray
    cols: np.ndarray
    block: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "rows", _index_array(self.rows))
        object.__setattr__(self, "cols", _index_array(self.cols))

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input vector."""
        return len(self.rows) * len(self.cols)


@dataclass(frozen=True)
class BlockPlan(Plan):
    """A partition of one weight's outputs into branches, plus rows that read no input.

    Invariant: every output row is in exactly one branch or in ``constant_rows``; no branch is empty; block
    ids are unique. Branches may read overlapping columns (general block-sparse structure).
    """

    n_out: int
    n_in: int
    branches: tuple[Branch, ...]
    constant_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(branch if branch.block is not None else replace(branch, block=i)
                                                  for i, branch in enumerate(self.branches)))
        object.__setattr__(self, "constant_rows", _index_array(self.constant_rows))
        rows = np.concatenate([b.rows for b in self.branches] + [self.constant_rows])
        if len(rows) != self.n_out or not np.array_equal(np.sort(rows), np.arange(self.n_out)):
            raise ValueError("plan rows must cover every output exactly once")
        for branch in self.branches:
            if len(branch.rows) == 0 or len(branch.cols) == 0:
                raise ValueError("plan branches must read and write at least one index")
            if branch.cols[0] < 0 or branch.cols[-1] >= self.n_in:
                raise ValueError(f"plan columns must lie in [0, {self.n_in})")
        if len({branch.block for branch in self.branches}) != len(self.branches):
            raise ValueError("plan block ids must be unique")

    @property
    def unused_cols(self) -> np.ndarray:
        """Input features no branch reads."""
        used = np.zeros(self.n_in, dtype=bool)
        for branch in self.branches:
            used[branch.cols] = True
        return np.flatnonzero(~used)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input vector of the decomposed operator."""
        return sum(branch.macs for branch in self.branches)

    def output_order(self) -> np.ndarray:
        """Output rows in the order the rewrite concatenates them: branches, then constant rows."""
        return np.concatenate([b.rows for b in self.branches] + [self.constant_rows])

    def relabeled(self, rows: Optional[np.ndarray] = None, cols: Optional[np.ndarray] = None) -> "BlockPlan":
        """The same plan after the outputs were reordered so that new row ``i`` is old row ``rows[i]`` (and
        inputs likewise by ``cols``); branches ordered by their first input column, each keeping its block id."""
        row_pos = np.argsort(rows) if rows is not None else np.arange(self.n_out)
        col_pos = np.argsort(cols) if cols is not None else np.arange(self.n_in)
        branches = sorted((Branch(row_pos[b.rows], col_pos[b.cols], b.block) for b in self.branches),
                          key=lambda b: (b.cols[0], b.rows[0]))
        return BlockPlan(self.n_out, self.n_in, tuple(branches), row_pos[self.constant_rows])

    def mask(self) -> np.ndarray:
        """The ``[n_out, n_in]`` Boolean support the plan keeps."""
        keep = np.zeros((self.n_out, self.n_in), dtype=bool)
        for branch in self.branches:
            keep[np.ix_(branch.rows, branch.cols)] = True
        return keep


@dataclass(frozen=True)
class LowRankPlan(Plan):
    """``W [n_out, n_in]`` of rank at most ``rank``, run as two products ``x -> x W_down^T [.., rank] -> W_up``.
    The rewrite reads the factors off the weight itself (its truncated SVD): a weight annealed to rank ``rank``
    is their product, so the plan carries no values."""

    n_out: int
    n_in: int
    rank: int

    def __post_init__(self):
        if not 1 <= self.rank <= min(self.n_out, self.n_in):
            raise ValueError(f"rank must lie in [1, {min(self.n_out, self.n_in)}], got {self.rank}")

    @property
    def macs(self) -> int:
        return self.rank * (self.n_in + self.n_out)


@dataclass(frozen=True)
class SlicePlan(Plan):
    """The weight keeps the output ``rows`` and the input ``cols`` (sorted, unique; None: all) and loses the
    rest: removed rows are hidden units removed whole, across this layer, the per-feature ops after it and the
    layers reading them, which drop the same columns (``remove_units``)."""

    n_out: int
    n_in: int
    rows: Optional[np.ndarray] = None
    cols: Optional[np.ndarray] = None

    def __post_init__(self):
        for name, bound in (("rows", self.n_out), ("cols", self.n_in)):
            kept = getattr(self, name)
            if kept is not None:
                kept = _index_array(kept)
                if len(kept) == 0 or kept[0] < 0 or kept[-1] >= bound:
                    raise ValueError(f"plan {name} must be a non-empty subset of [0, {bound})")
                object.__setattr__(self, name, kept)

    @property
    def kept(self) -> tuple[int, int]:
        """(rows, columns) kept."""
        return (self.n_out if self.rows is None else len(self.rows),
                self.n_in if self.cols is None else len(self.cols))

    @property
    def macs(self) -> int:
        rows, cols = self.kept
        return rows * cols


@dataclass(frozen=True)
class HeadsPlan(SlicePlan):
    """A ``SlicePlan`` that keeps whole attention heads: ``heads`` heads of ``n / heads`` features each, on the
    rows of a query, key or value projection or the columns of the output projection (``remove_heads``)."""

    heads: int = 0

    def __post_init__(self):
        super().__post_init__()
        for kept, n in ((self.rows, self.n_out), (self.cols, self.n_in)):
            if kept is None:
                continue
            width = n // self.heads if self.heads >= 2 and n % self.heads == 0 else 0
            if not width or not np.array_equal(kept, whole_heads(kept // width, width)):
                raise ValueError(f"a heads plan keeps whole heads: {n} features in {self.heads} heads")

    def kept_heads(self) -> np.ndarray:
        """The heads kept, by index."""
        kept, n = (self.rows, self.n_out) if self.rows is not None else (self.cols, self.n_in)
        return np.unique(kept // (n // self.heads)) if kept is not None else np.arange(self.heads)


def whole_heads(heads: np.ndarray, width: int) -> np.ndarray:
    """The features of ``heads`` (each ``width`` wide, in order)."""
    return (np.unique(heads)[:, None] * width + np.arange(width)).reshape(-1)


ROW_CHUNK = 1 << 22  # support entries scanned at a time while building the component graph


def _component_labels(support: np.ndarray) -> np.ndarray:
    """Weak components of the bipartite graph rows -> ``n_out + cols``: labels of rows, then columns. The
    edge list is built a block of rows at a time with int32 indices, so memory follows the entries kept."""
    n_out, n_in = support.shape
    step = max(1, ROW_CHUNK // max(n_in, 1))
    counts = support.sum(axis=1)
    indices = np.concatenate([np.nonzero(support[start:start + step])[1].astype(np.int32) + n_out
                              for start in range(0, n_out, step)] or [np.zeros(0, np.int32)])
    indptr = np.concatenate([[0], np.cumsum(counts), np.full(n_in, counts.sum())]).astype(np.int64)
    n = n_out + n_in
    graph = csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n))
    return connected_components(graph, directed=True, connection="weak")[1]


def plan_from_support(support: np.ndarray) -> BlockPlan:
    """Connected components of the bipartite row/column graph of ``support`` (shape ``[n_out, n_in]``).

    Each component with at least one entry is a branch; rows without entries are constant rows and
    columns without entries are unused. Branches are ordered by their first row. A row that reads every
    input (or a column every output reaches) makes one component at once, as in most trained weights.
    """
    support = np.asarray(support, dtype=bool)
    if support.ndim != 2:
        raise ValueError(f"support must be 2-D, got shape {support.shape}")
    n_out, n_in = support.shape
    live_rows, live_cols = support.any(axis=1), support.any(axis=0)
    if n_out and n_in and (support.all(axis=1).any() or support.all(axis=0).any()):
        rows = np.flatnonzero(live_rows)
        return BlockPlan(n_out, n_in, (Branch(rows, np.flatnonzero(live_cols)),), np.flatnonzero(~live_rows))
    labels = _component_labels(support)
    row_labels, col_labels = labels[:n_out], labels[n_out:]
    branches = [
        Branch(np.flatnonzero((row_labels == label) & live_rows), np.flatnonzero(col_labels == label))
        for label in dict.fromkeys(row_labels[live_rows])
    ]
    return BlockPlan(n_out, n_in, tuple(branches), np.flatnonzero(~live_rows))
