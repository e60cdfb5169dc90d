"""The decision: which entries training confirmed, with the false-discovery rate controlled.

- Benjamini-Hochberg at level q: reject the k smallest p-values, k the largest rank with
  ``p_(k) <= k q / m``. Only p-values <= q can be rejected, so pooled (model-scope) decisions keep just
  those: memory follows the candidates, not the model.
- Storey's pi0 (lambda = 0.5): ``#{p > lambda} / (m (1 - lambda))``, clipped to [0, 1], reported as the
  fraction of entries indistinguishable from initialization.
- Grouped edges (the paper's multi-channel edge) for a chain ``x -> W1[h, d] -> elementwise -> W2[d_out, h]``:
  edge ``j -> i`` gathers the h paths ``j -> k -> i``. A path is confirmed only if both of its parameters
  are (intersection-union test: ``p_path = max(p1[k, j], p2[i, k])``); Fisher combines the h path p-values:
  ``X = -2 sum_k log p_path``, ``p_edge = P(chi2_{2h} >= X)``. Conservative (``max`` of two uniforms is
  not uniform), exact in memory, O(d_out * h * d) time like the chain's own product.
- Fisher's combination (``fisher_combine``): ``n`` p-values of one hypothesis (a Conv channel pair's window)
  give ``p = P(chi2_{2n} >= -2 sum log p_k)``; exact for independent uniform p-values under the null.
- Spectral form (``spectral_rank``): the singular values of a weight above the Marchenko-Pastur edge of its
  init null count the directions training confirmed.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

STOREY_LAMBDA = 0.5
TINY = 1e-300


def bh_threshold(candidates: np.ndarray, m: int, q: float) -> float:
    """The BH cut for ``m`` tests given every p-value <= q among them (``candidates``): reject
    ``p <= cut``; -inf when nothing is rejected."""
    if m == 0 or len(candidates) == 0:
        return float("-inf")
    ordered = np.sort(np.asarray(candidates, dtype=np.float64).ravel())
    passing = np.flatnonzero(ordered <= np.arange(1, len(ordered) + 1) * q / m)
    return float(ordered[passing[-1]]) if len(passing) else float("-inf")


def benjamini_hochberg(p: np.ndarray, q: float) -> np.ndarray:
    """Boolean mask of the p-values BH rejects at level q."""
    p = np.asarray(p)
    return p <= bh_threshold(p[p <= q], p.size, q)


def storey_pi0(p: np.ndarray, lam: float = STOREY_LAMBDA) -> float:
    p = np.asarray(p)
    if p.size == 0:
        return 1.0
    return float(min(1.0, np.count_nonzero(p > lam) / (p.size * (1.0 - lam))))


def fisher_combine(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Fisher's combined p-values along ``axis`` (module rule)."""
    statistic = -2.0 * np.log(np.maximum(p, TINY)).sum(axis=axis)
    return stats.chi2.sf(statistic, 2 * p.shape[axis])


def grouped_edge_p_values(p1: np.ndarray, p2: np.ndarray, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """Edge p-values ``[d_out, d]`` of the chain ``W1[h, d]``, ``W2[d_out, h]`` (module rule)."""
    h, d = p1.shape
    d_out, h2 = p2.shape
    if h != h2:
        raise ValueError(f"chain mismatch: W1 has {h} outputs, W2 reads {h2}")
    log1 = np.log(np.maximum(p1, TINY))  # [h, d]
    log2 = np.log(np.maximum(p2, TINY))  # [d_out, h]
    statistic = np.empty((d_out, d))
    rows = max(1, chunk_bytes // (8 * h * d))
    for start in range(0, d_out, rows):
        block = np.maximum(log2[start:start + rows, :, None], log1[None, :, :])  # [rows, h, d]
        statistic[start:start + rows] = -2.0 * block.sum(axis=1)
    return stats.chi2.sf(statistic, 2 * h)


def spectral_rank(matrix: np.ndarray, std: float) -> int:
    """The directions training confirmed in ``W [n_out, n_in]``, the criterion's spectral form: singular values
    above the largest one a matrix of independent init-like entries (standard deviation ``std``) reaches, the
    Marchenko-Pastur edge ``std * (sqrt(n_out) + sqrt(n_in))`` (trained weights are init-like noise plus a few
    learned directions: Thamm, Staats and Rosenow 2022)."""
    n_out, n_in = matrix.shape
    edge = std * (np.sqrt(n_out) + np.sqrt(n_in))
    return int(np.sum(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) > edge))
