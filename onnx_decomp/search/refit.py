"""Refit: after a cut, each block's weights and bias are refitted by ridge least squares so that the cut
layer reproduces the dense layer on calibration activations (design.md section 5; beyond the paper).

Rule, for a layer with plan P and original effective weight ``W0`` and bias ``b0``:
- target ``T = X_dense W0^T + b0``: the dense layer's output on the original model's activations;
- inputs ``Z = X_cut``: the activations reaching the layer with the earlier cuts in force (the decomposed
  model's own activations, as GPTQ and SparseGPT feed them);
- per branch (rows R, columns C): ``W[R, C] = argmin ||Z_C W^T + 1 b^T - T_R||^2 + lam ||W - W0[R, C]||^2``,
  the bias unregularised (Z and T centred; a layer without a bias solves the uncentred problem). The ridge
  pulls toward the original weights, not toward zero, so that with few samples the refit stays near the
  plain cut instead of fitting noise; ``lam = ridge * trace(Z_C^T Z_C) / |C|``, relative to the inputs' mean
  energy. ``ridge`` is fixed when given (``config.AnnealConfig``); by default each branch chooses it from
  ``RIDGE_GRID`` by two-fold cross-validation over the activation rows (seeded halves; squared error on the
  other half, on at most ``CV_OUTPUTS`` of the branch's rows), because the right strength depends on the
  data: a trained model's correlated activations want little (digits: 0.01), independent inputs want
  much (the dropped part is then noise no refit can reproduce). A ``Refitter`` remembers each plan's
  choice, so a layer refitted again under the same plan (on other activations) does not choose again;
- constant rows (they read nothing) take the mean of their target as bias (zero output without a bias);
- entries outside the plan are zero.
The plain cut keeps ``W0`` inside the plan, zero outside, and the bias as it was.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.linalg

from onnx_decomp.search.network import Layer, Stored
from onnx_decomp_passes import BlockPlan

FLOOR = 1e-9  # lam never falls below this share of the inputs' mean energy (ridge 0: least squares)
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
CV_OUTPUTS = 64


def plain_cut(layer: Layer, plan: BlockPlan) -> Stored:
    """The original weights inside the plan, zeros outside; the bias unchanged."""
    return layer.store(layer.matrix() * plan.mask(), layer.bias_vector())


def _solve(gram: np.ndarray, rhs: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """``(G + lam I)^-1 (rhs + lam prior)`` for a positive semi-definite ``G``."""
    return scipy.linalg.solve(gram + lam * np.eye(len(gram)), rhs + lam * prior, assume_a="pos")


def cross_validated_ridge(halves: list[tuple[np.ndarray, np.ndarray]], prior: np.ndarray, energy: float) -> float:
    """The ``RIDGE_GRID`` value whose fit on one half of the rows predicts the other half best (module rule).
    ``halves``: per half, its Gram and cross-products restricted to the branch (the cross-products' columns
    subsampled to at most ``CV_OUTPUTS`` of its rows, ``prior`` alike); one eigendecomposition per half
    serves the whole grid."""
    errors = np.zeros(len(RIDGE_GRID))
    for (gram_fit, cross_fit), (gram_test, cross_test) in (halves, halves[::-1]):
        values, vectors = np.linalg.eigh(gram_fit)
        data, pull = vectors.T @ cross_fit, vectors.T @ prior
        for position, ridge in enumerate(RIDGE_GRID):
            lam = max(ridge * energy, FLOOR * (energy or 1.0))
            solution = vectors @ ((data + lam * pull) / (np.maximum(values, 0.0) + lam)[:, None])
            errors[position] += np.sum((gram_test @ solution) * solution) - 2 * np.sum(solution * cross_test)
    return RIDGE_GRID[int(np.argmin(errors))]


class Refitter:
    """The module rule with a fixed ``ridge``, or cross-validated ridges remembered per plan."""

    def __init__(self, ridge: Optional[float] = None, seed: int = 0):
        self.ridge, self.seed = ridge, seed
        self._chosen: dict[tuple[int, int], list[float]] = {}  # (layer, id(plan)) -> ridge per branch

    def __call__(self, layer: Layer, plan: BlockPlan, dense: np.ndarray, cut: np.ndarray) -> Stored:
        """Refit ``layer`` under ``plan`` from paired activation rows ``dense`` and ``cut`` (``[rows, n_in]``)."""
        w0, b0 = layer.matrix(), layer.bias_vector()
        z = cut.astype(np.float64)
        target = dense.astype(np.float64) @ w0.T + b0
        with_bias = layer.bias is not None
        z_mean, t_mean = (z.mean(0), target.mean(0)) if with_bias else (np.zeros(z.shape[1]), np.zeros(len(b0)))
        z, target = z - z_mean, target - t_mean
        rng = np.random.default_rng(self.seed)
        key = (layer.index, id(plan))
        choose = self.ridge is None and key not in self._chosen and len(z) >= 4
        if choose:
            half = np.zeros(len(z), bool)
            half[rng.permutation(len(z))[:len(z) // 2]] = True
            parts = [(z[rows].T @ z[rows], z[rows].T @ target[rows]) for rows in (half, ~half)]
            gram, cross = parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]
            self._chosen[key] = []
        else:
            gram, cross = z.T @ z, z.T @ target
        weight, bias = np.zeros_like(w0), t_mean.copy()
        for number, branch in enumerate(plan.branches):
            rows, cols = branch.rows, branch.cols
            block = gram[np.ix_(cols, cols)]
            energy = np.trace(block) / len(cols)
            if choose:
                some = rows if len(rows) <= CV_OUTPUTS else np.sort(rng.choice(rows, CV_OUTPUTS, replace=False))
                self._chosen[key].append(cross_validated_ridge(
                    [(g[np.ix_(cols, cols)], c[np.ix_(cols, some)]) for g, c in parts], w0[np.ix_(some, cols)].T,
                    energy / 2))
            ridge = self.ridge if self.ridge is not None else self._chosen.get(key, [RIDGE_GRID[1]] * (number + 1))[number]
            lam = max(ridge * energy, FLOOR * (energy or 1.0))
            solution = _solve(block, cross[np.ix_(cols, rows)], w0[np.ix_(rows, cols)].T, lam)
            weight[np.ix_(rows, cols)] = solution.T
            bias[rows] = t_mean[rows] - solution.T @ z_mean[cols]
        return layer.store(weight, bias if with_bias else None)
