"""Cut a chain of two linear layers into k balanced sub-networks that stay independent end to end.

Chain: ``x -> W1 [h, d] -> per-feature op -> W2 [d_out, h]`` (orientation ``[n_out, n_in]``).

Rules:
1. Co-cluster the signed composite ``M = W2 @ W1`` (``[d_out, d]``): initialization noise cancels along
   the paths through the hidden layer, learned dependencies add up (design.md section 4). Clustering one
   layer's ``|W|``, or ``|W2| @ |W1|``, finds no groups on the paper's localized scenario; ``|W2 @ W1|`` does.
2. Spectral co-clustering (Dhillon 2001) of ``A = |M|``: ``An = D_r^-1/2 A D_c^-1/2`` with row and column
   sums ``D_r``, ``D_c``; the top k singular vector pairs, scaled back by ``D_r^-1/2`` and ``D_c^-1/2``, embed
   rows and columns in one space (for an exactly block-diagonal ``A`` every row and column of a block lands
   on one point; Dhillon's log2(k) vectors can merge such points, k cannot); k-means (scipy's ``kmeans2``
   with k-means++ seeding, the best of ``n_init`` seeded runs) places k centers.
3. Hidden unit ``u`` prefers the block ``b`` whose composite it carries most, signed:
   ``sum_{i in rows_b, j in cols_b} W2[i, u] W1[u, j] M[i, j]`` (its paths' share of the learned
   dependency; paths of init noise have random sign and score about zero, whatever their magnitude).
4. Balance: outputs, inputs and hidden units are each assigned greedily, most preferred (item, block)
   pairs first (nearest center; largest share), every block taking ``n // k`` or ``n // k + 1`` items.
   So every block has outputs, inputs and hidden units (``k <= min(d_out, d, h)``) and the k sub-networks
   cost alike; planted balanced groups come out unchanged.
5. Plans: W1 keeps ``[hidden of b] x [inputs of b]``, W2 keeps ``[outputs of b] x [hidden of b]``, as
   ``onnx_decomp_passes.plan_from_support`` of these masks (k branches each).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy.cluster.vq import kmeans2, vq

from onnx_decomp_passes import BlockPlan, plan_from_support

logger = logging.getLogger(__name__)

TINY = 1e-30


def _squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return ((points[:, None, :] - centers[None]) ** 2).sum(-1)


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 10, iterations: int = 300) -> np.ndarray:
    """Centers ``[k, dim]`` of ``points [n, dim]``: the lowest-inertia of ``n_init`` runs of scipy's
    ``kmeans2`` (k-means++ seeds, ``iterations`` Lloyd steps) drawn from ``seed``. An emptied cluster keeps
    its center (scipy's warning about it is silenced: the best of the runs is what counts)."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float64)
    runs = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        for _ in range(n_init):
            centers, _ = kmeans2(points, k, iter=iterations, minit="++", seed=rng)
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


def spectral_cocluster(matrix: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Balanced row labels and column labels (values in ``[0, k)``) of ``|matrix|`` (rules 2 and 4)."""
    a = np.abs(np.asarray(matrix, dtype=np.float64))
    if not 1 <= k <= min(a.shape):
        raise ValueError(f"k={k} must lie in [1, {min(a.shape)}] for a {a.shape} matrix")
    row_scale = 1.0 / np.sqrt(np.maximum(a.sum(1), TINY))
    col_scale = 1.0 / np.sqrt(np.maximum(a.sum(0), TINY))
    u, _, vt = np.linalg.svd(row_scale[:, None] * a * col_scale[None, :], full_matrices=False)
    embedding = np.vstack([row_scale[:, None] * u[:, :k], col_scale[:, None] * vt[:k].T])
    closeness = -_squared_distances(embedding, kmeans(embedding, k, seed=seed, n_init=n_init))
    return balanced_assignment(closeness[:a.shape[0]]), balanced_assignment(closeness[a.shape[0]:])


def assign_hidden(w1: np.ndarray, w2: np.ndarray, row_labels: np.ndarray, col_labels: np.ndarray,
                  k: int) -> np.ndarray:
    """Balanced block of every hidden unit by its signed share of each block's composite (rules 3, 4)."""
    share = np.empty((w1.shape[0], k))
    for b in range(k):
        rows, cols = row_labels == b, col_labels == b
        block = w2[rows] @ w1[:, cols]  # this block of M
        share[:, b] = ((w2[rows].T @ block) * w1[:, cols]).sum(1)
    return balanced_assignment(share)


def coclustered_plan(w1: np.ndarray, w2: np.ndarray, k: int, seed: int = 0) -> tuple[BlockPlan, BlockPlan]:
    """Plans for ``W1 [h, d]`` and ``W2 [d_out, h]`` that make the chain k independent sub-networks."""
    w1, w2 = np.asarray(w1, dtype=np.float64), np.asarray(w2, dtype=np.float64)
    if w1.ndim != 2 or w2.ndim != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"need W1 [h, d] and W2 [d_out, h], got {w1.shape} and {w2.shape}")
    if k > w1.shape[0]:
        raise ValueError(f"k={k} exceeds the {w1.shape[0]} hidden units")
    row_labels, col_labels = spectral_cocluster(w2 @ w1, k, seed=seed)
    hidden_labels = assign_hidden(w1, w2, row_labels, col_labels, k)
    plan1 = plan_from_support(hidden_labels[:, None] == col_labels[None, :])
    plan2 = plan_from_support(row_labels[:, None] == hidden_labels[None, :])
    logger.debug("co-clustered chain %s -> %s into %d blocks", w1.shape, w2.shape, k)
    return plan1, plan2
