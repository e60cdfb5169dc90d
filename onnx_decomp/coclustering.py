"""Cut a chain of two linear layers into k sub-networks that stay independent end to end.

Chain: ``x -> W1 [h, d] -> per-feature op -> W2 [d_out, h]`` (orientation ``[n_out, n_in]``).

Rules:
1. Co-cluster the signed composite ``M = W2 @ W1`` (``[d_out, d]``): initialization noise cancels along
   the paths through the hidden layer, learned dependencies add up (design.md section 4). Clustering one
   layer's ``|W|``, or ``|W2| @ |W1|``, finds no groups on the paper's localized scenario; ``|W2 @ W1|`` does.
2. Spectral co-clustering (Dhillon 2001) of ``A = |M|``: ``An = D_r^-1/2 A D_c^-1/2`` with row and column
   sums ``D_r``, ``D_c``; the top k singular vector pairs, scaled back by ``D_r^-1/2`` and ``D_c^-1/2``, embed
   rows and columns in one space (for an exactly block-diagonal ``A`` every row and column of a block lands
   on the same point); k-means (k-means++ seeding, best of ``n_init`` seeded runs) labels them jointly.
3. Hidden unit ``u`` joins the block ``b`` that keeps most of its path mass:
   ``argmax_b (sum_{i in rows_b} |W2[i, u]|) * (sum_{j in cols_b} |W1[u, j]|)``.
4. Plans are the connected components of the block masks (``passes.plan.plan_from_support``): W1 keeps
   ``[hidden of b] x [inputs of b]``, W2 keeps ``[outputs of b] x [hidden of b]``. A block without inputs
   leaves its hidden units as constant rows (their bias); one without hidden units leaves its outputs
   constant.
"""

from __future__ import annotations

import logging

import numpy as np

from passes.plan import BlockPlan, plan_from_support

logger = logging.getLogger(__name__)

TINY = 1e-30


def _kmeans_once(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> tuple[np.ndarray, float]:
    centers = points[[rng.integers(len(points))]]
    while len(centers) < k:  # k-means++: the next center with probability proportional to squared distance
        distance = ((points[:, None, :] - centers[None]) ** 2).sum(-1).min(1)
        total = distance.sum()
        pick = rng.choice(len(points), p=distance / total) if total > 0 else rng.integers(len(points))
        centers = np.vstack([centers, points[pick]])
    labels = np.zeros(len(points), dtype=np.int64)
    for step in range(iterations):
        distance = ((points[:, None, :] - centers[None]) ** 2).sum(-1)
        new_labels = distance.argmin(1)
        if step > 0 and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for cluster in range(k):
            members = points[labels == cluster]
            if len(members):
                centers[cluster] = members.mean(0)
    inertia = float(((points - centers[labels]) ** 2).sum())
    return labels, inertia


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 10, iterations: int = 300) -> np.ndarray:
    """Cluster labels of ``points`` ``[n, dim]``: Lloyd's iterations from k-means++ seeds, best inertia of
    ``n_init`` runs drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    runs = [_kmeans_once(np.asarray(points, dtype=np.float64), k, rng, iterations) for _ in range(n_init)]
    return min(runs, key=lambda run: run[1])[0]


def spectral_cocluster(matrix: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Row labels and column labels (values in ``[0, k)``) of ``|matrix|`` (rule 2)."""
    a = np.abs(np.asarray(matrix, dtype=np.float64))
    if not 1 <= k <= min(a.shape):
        raise ValueError(f"k={k} must lie in [1, {min(a.shape)}] for a {a.shape} matrix")
    row_scale = 1.0 / np.sqrt(np.maximum(a.sum(1), TINY))
    col_scale = 1.0 / np.sqrt(np.maximum(a.sum(0), TINY))
    u, _, vt = np.linalg.svd(row_scale[:, None] * a * col_scale[None, :], full_matrices=False)
    embedding = np.vstack([row_scale[:, None] * u[:, :k], col_scale[:, None] * vt[:k].T])
    labels = kmeans(embedding, k, seed=seed, n_init=n_init)
    return labels[:a.shape[0]], labels[a.shape[0]:]


def assign_hidden(w1: np.ndarray, w2: np.ndarray, row_labels: np.ndarray, col_labels: np.ndarray,
                  k: int) -> np.ndarray:
    """Block of every hidden unit: the one keeping most of its path mass (rule 3)."""
    out_mass = np.stack([np.abs(w2[row_labels == b]).sum(0) for b in range(k)], axis=1)  # [h, k]
    in_mass = np.stack([np.abs(w1[:, col_labels == b]).sum(1) for b in range(k)], axis=1)  # [h, k]
    return (out_mass * in_mass).argmax(1)


def coclustered_plan(w1: np.ndarray, w2: np.ndarray, k: int, seed: int = 0) -> tuple[BlockPlan, BlockPlan]:
    """Plans for ``W1 [h, d]`` and ``W2 [d_out, h]`` that make the chain k independent sub-networks."""
    w1, w2 = np.asarray(w1, dtype=np.float64), np.asarray(w2, dtype=np.float64)
    if w1.ndim != 2 or w2.ndim != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"need W1 [h, d] and W2 [d_out, h], got {w1.shape} and {w2.shape}")
    row_labels, col_labels = spectral_cocluster(w2 @ w1, k, seed=seed)
    hidden_labels = assign_hidden(w1, w2, row_labels, col_labels, k)
    plan1 = plan_from_support(hidden_labels[:, None] == col_labels[None, :])
    plan2 = plan_from_support(row_labels[:, None] == hidden_labels[None, :])
    logger.debug("co-clustered chain %s -> %s into %d/%d blocks (hidden sizes %s)", w1.shape, w2.shape,
                 len(plan1.branches), len(plan2.branches), np.bincount(hidden_labels, minlength=k).tolist())
    return plan1, plan2
