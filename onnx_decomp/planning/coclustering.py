"""Cut a chain of linear layers into k balanced sub-networks that stay independent end to end.

Chain: ``x -> W1 [h, d] -> per-feature op -> W2 [d_out, h]`` (orientation ``[n_out, n_in]``); a longer
stack ``W1, ..., Wn`` is cut the same way with one partition of inputs, every hidden space and outputs.

Rules:
1. Co-cluster the signed composite ``M = W2 @ W1`` (``[d_out, d]``): initialization noise cancels along
   the paths through the hidden layer, learned dependencies add up (design.md section 4). Clustering one
   layer's ``|W|``, or ``|W2| @ |W1|``, finds no groups on the paper's localized scenario; ``|W2 @ W1|`` does.
2. Spectral co-clustering (Dhillon 2001) of ``A = |M|``: ``An = D_r^-1/2 A D_c^-1/2`` with row and column
   sums ``D_r``, ``D_c``; the top k singular vector pairs, scaled back by ``D_r^-1/2`` and ``D_c^-1/2``, embed
   rows and columns in one space (for an exactly block-diagonal ``A`` every row and column of a block lands
   on one point; Dhillon's log2(k) vectors can merge such points, k cannot); k-means (scipy's ``kmeans2``
   with k-means++ seeding, the best of ``n_init`` seeded runs) places k centers. Above ``FULL_SVD_MAX``
   rows or columns only the top k singular pairs are computed (ARPACK, ``scipy.sparse.linalg.svds``).
3. Hidden unit ``u`` prefers the block ``b`` whose composite it carries most, signed:
   ``sum_{i in rows_b, j in cols_b} W2[i, u] W1[u, j] M[i, j]`` (its paths' share of the learned
   dependency; paths of init noise have random sign and score about zero, whatever their magnitude).
4. Balance: outputs, inputs and hidden units are each assigned greedily, most preferred (item, block)
   pairs first (nearest center; largest share), every block taking ``n // k`` or ``n // k + 1`` items.
   So every block has outputs, inputs and hidden units (``k <= min(d_out, d, h)``) and the k sub-networks
   cost alike; planted balanced groups come out unchanged. ``balanced=False`` takes every item's favourite
   block instead (blocks of any size; a block may end up empty).
5. Plans: W1 keeps ``[hidden of b] x [inputs of b]``, W2 keeps ``[outputs of b] x [hidden of b]``, as
   ``onnx_decomp_passes.plan_from_support`` of these masks (k branches each).
6. Stacks: the composite is ``Wn ... W1``; the hidden space after layer l is assigned by rule 3 with
   ``W1`` replaced by ``Wl ... W1`` and ``W2`` by ``Wn ... W(l+1)``; layer l keeps
   ``[its outputs' block b] x [its inputs' block b]``.
"""

from __future__ import annotations

import logging
import warnings

from typing import Optional, Sequence

import numpy as np
from scipy.cluster.vq import kmeans2, vq
from scipy.sparse.linalg import svds

from onnx_decomp_passes import BlockPlan, Branch

logger = logging.getLogger(__name__)

TINY = 1e-30
FULL_SVD_MAX = 512  # above this many rows or columns, only the top k singular pairs are computed
KMEANS_POINTS = 20000  # up to this many embedded rows and columns, k-means takes the best of 10 runs


def _squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return np.maximum((points ** 2).sum(1)[:, None] - 2 * points @ centers.T + (centers ** 2).sum(1)[None], 0.0)


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 10, iterations: int = 300,
           chunk: int = 10) -> np.ndarray:
    """Centers ``[k, dim]`` of ``points [n, dim]``: the lowest-inertia of ``n_init`` runs of scipy's
    ``kmeans2`` (k-means++ seeds, at most ``iterations`` Lloyd steps, in chunks of ``chunk`` that stop once a
    chunk leaves the labels unchanged: a fixed point, so the result is the full run's) drawn from ``seed``.
    An emptied cluster keeps its center (scipy's warning about it is silenced: the best run is what counts)."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float64)
    runs = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        for _ in range(n_init):
            centers, labels = kmeans2(points, k, iter=chunk, minit="++", seed=rng)
            for _ in range(chunk, iterations, chunk):
                before = labels
                centers, labels = kmeans2(points, centers, iter=chunk, minit="matrix")
                if np.array_equal(labels, before):
                    break
            runs.append((float((vq(points, centers)[1] ** 2).sum()), centers))
    return min(runs, key=lambda run: run[0])[1]


def balanced_assignment(preference: np.ndarray) -> np.ndarray:
    """Group of every item from ``preference [n, k]`` (higher is better): greedily, best pairs first,
    every group taking ``n // k`` or ``n // k + 1`` items (rule 4)."""
    n, k = preference.shape
    base, extra = divmod(n, k)
    labels = np.full(n, -1, dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    grown = 0  # groups that took base + 1 items
    for flat in np.argsort(-preference, axis=None, kind="stable"):
        item, group = divmod(int(flat), k)
        if labels[item] < 0 and (counts[group] < base or (counts[group] == base and grown < extra)):
            grown += int(counts[group] == base)
            labels[item] = group
            counts[group] += 1
    return labels


def assignment(preference: np.ndarray, balanced: bool = True) -> np.ndarray:
    """Group of every item: ``balanced_assignment``, or every item's favourite group."""
    return balanced_assignment(preference) if balanced else preference.argmax(1)


def top_singular_vectors(a: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``u [m, k]`` and ``vt [k, n]`` of the k largest singular values, largest first (rule 2)."""
    if max(a.shape) <= FULL_SVD_MAX or k >= min(a.shape) - 1:
        u, _, vt = np.linalg.svd(a, full_matrices=False)
        return u[:, :k], vt[:k]
    start = np.random.default_rng(seed).standard_normal(min(a.shape))
    u, values, vt = svds(a, k=k, v0=start)
    order = np.argsort(-values)
    return u[:, order], vt[order]


def cocluster_closeness(matrix: np.ndarray, k: int, seed: int = 0, n_init: Optional[int] = None,
                        overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Closeness ``[rows, k]`` and ``[cols, k]`` of every row and column of ``|matrix|`` to the k centers
    (minus squared distance in the spectral embedding; rule 2); ``n_init`` None: 10 k-means runs up to
    ``KMEANS_POINTS`` embedded points, fewer above (at least 2). ``overwrite``: a float64 ``matrix`` is
    scaled in place instead of a copy (as scipy's ``overwrite_a``)."""
    a = np.asarray(matrix, np.float64) if overwrite else np.array(matrix, dtype=np.float64)  # scaled in place
    if not 1 <= k <= min(a.shape):
        raise ValueError(f"k={k} must lie in [1, {min(a.shape)}] for a {a.shape} matrix")
    np.abs(a, out=a)
    row_scale = 1.0 / np.sqrt(np.maximum(a.sum(1), TINY))
    col_scale = 1.0 / np.sqrt(np.maximum(a.sum(0), TINY))
    a *= row_scale[:, None]
    a *= col_scale[None, :]
    u, vt = top_singular_vectors(a, k, seed)
    embedding = np.vstack([row_scale[:, None] * u, col_scale[:, None] * vt.T])
    runs = n_init or max(2, min(10, KMEANS_POINTS // len(embedding)))
    closeness = -_squared_distances(embedding, kmeans(embedding, k, seed=seed, n_init=runs))
    return closeness[:a.shape[0]], closeness[a.shape[0]:]


def spectral_cocluster(matrix: np.ndarray, k: int, seed: int = 0, n_init: Optional[int] = None,
                       balanced: bool = True, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row labels and column labels (values in ``[0, k)``) of ``|matrix|`` (rules 2 and 4; ``overwrite`` as
    ``cocluster_closeness``)."""
    rows, cols = cocluster_closeness(matrix, k, seed, n_init, overwrite)
    return assignment(rows, balanced), assignment(cols, balanced)


def assign_hidden(w1: np.ndarray, w2: np.ndarray, row_labels: np.ndarray, col_labels: np.ndarray,
                  k: int, balanced: bool = True, composite: Optional[np.ndarray] = None) -> np.ndarray:
    """Block of every hidden unit by its signed share of each block's composite (rules 3, 4); the blocks are
    sliced from ``composite`` (``W2 @ W1``) when it is known."""
    share = np.empty((w1.shape[0], k))
    for b in range(k):
        rows, cols = np.flatnonzero(row_labels == b), np.flatnonzero(col_labels == b)
        block = w2[rows] @ w1[:, cols] if composite is None else composite[np.ix_(rows, cols)]  # this block of M
        share[:, b] = ((w1[:, cols] @ block.T) * w2[rows].T).sum(1)
    return assignment(share, balanced)


def blocks_plan(row_labels: np.ndarray, col_labels: np.ndarray, rows_kept: Optional[np.ndarray] = None,
                cols_kept: Optional[np.ndarray] = None) -> BlockPlan:
    """The plan whose branch b keeps ``[rows labelled b] x [columns labelled b]`` (rule 5), leaving out the
    rows and columns not kept (Boolean masks; such rows, and rows whose block keeps no column, become
    constant rows): ``plan_from_support`` of that support, built from the labels in linear time."""
    rows_kept = np.ones(len(row_labels), bool) if rows_kept is None else rows_kept
    cols_kept = np.ones(len(col_labels), bool) if cols_kept is None else cols_kept
    branches, constant = [], [np.flatnonzero(~rows_kept)]
    for b in np.unique(row_labels):
        rows = np.flatnonzero((row_labels == b) & rows_kept)
        cols = np.flatnonzero((col_labels == b) & cols_kept)
        if len(rows) and len(cols):
            branches.append(Branch(rows, cols, int(b)))
        else:
            constant.append(rows)
    branches.sort(key=lambda branch: branch.rows[0])
    return BlockPlan(len(row_labels), len(col_labels), tuple(branches), np.concatenate(constant))


class Stack:
    """A chain ``W1 [h, d], W2, ..., Wn [d_out, h']`` whose partial products are computed once: the rules
    need ``Wl ... W1`` and ``Wn ... W(l+1)`` for every hidden space, whose product is the composite ``M``
    for every l. Scaling the inputs' columns (Wanda's input norms) scales the columns of every ``Wl ... W1``
    alike, so ``labels`` takes the scale as an argument instead of a new stack. Products are float32."""

    def __init__(self, weights: Sequence[np.ndarray]):
        weights = [np.asarray(w, dtype=np.float32) for w in weights]  # clustering needs no more precision
        if len(weights) < 2 or any(w.ndim != 2 for w in weights) or \
                any(after.shape[1] != before.shape[0] for before, after in zip(weights, weights[1:])):
            raise ValueError(f"need W1 [h, d], W2 [d_out, h], ... chained, got {[w.shape for w in weights]}")
        self.hidden = min(w.shape[0] for w in weights[:-1])
        self.below = [weights[0]]  # Wl ... W1 for l = 1, ..., n
        for w in weights[1:]:
            self.below.append(w @ self.below[-1])
        above = [weights[-1]]  # Wn ... W(l+1) for l = n-1, ..., 1
        for w in reversed(weights[1:-1]):
            above.append(above[-1] @ w)
        self.above = above[::-1]  # for l = 1, ..., n-1

    def labels(self, k: int, seed: int = 0, balanced: bool = True,
               column_scale: Optional[np.ndarray] = None) -> list[np.ndarray]:
        """Block labels of the index spaces, inputs first, outputs last (rules 1-4 and 6), with the inputs'
        columns scaled by ``column_scale``."""
        if k > self.hidden:
            raise ValueError(f"k={k} exceeds the {self.hidden} hidden units")
        scale = np.ones(self.below[0].shape[1], np.float32) if column_scale is None else \
            np.asarray(column_scale, np.float32)
        composite = self.below[-1] * scale
        row_labels, col_labels = spectral_cocluster(composite, k, seed=seed, balanced=balanced)
        hidden = [assign_hidden(first * scale, second, row_labels, col_labels, k, balanced, composite)
                  for first, second in zip(self.below[:-1], self.above)]
        return [col_labels, *hidden, row_labels]

    def plans(self, k: int, seed: int = 0, balanced: bool = True,
              column_scale: Optional[np.ndarray] = None) -> tuple[BlockPlan, ...]:
        """Plans that make the stack k independent sub-networks (rule 5 for every layer)."""
        labels = self.labels(k, seed, balanced, column_scale)
        logger.debug("co-clustered stack %s into %d blocks", [w.shape for w in self.below], k)
        return tuple(blocks_plan(outputs, inputs) for inputs, outputs in zip(labels, labels[1:]))


def coclustered_stack_plan(weights: Sequence[np.ndarray], k: int, seed: int = 0,
                           balanced: bool = True) -> tuple[BlockPlan, ...]:
    """Plans for the stack ``W1 [h, d], W2, ..., Wn [d_out, h']`` that make it k independent sub-networks."""
    return Stack(weights).plans(k, seed, balanced)


def coclustered_plan(w1: np.ndarray, w2: np.ndarray, k: int, seed: int = 0,
                     balanced: bool = True) -> tuple[BlockPlan, BlockPlan]:
    """Plans for ``W1 [h, d]`` and ``W2 [d_out, h]`` that make the chain k independent sub-networks."""
    return coclustered_stack_plan([w1, w2], k, seed, balanced)
