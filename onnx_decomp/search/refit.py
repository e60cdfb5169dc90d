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
  much (the dropped part is then noise no refit can reproduce). Every refit chooses again, on the rows it
  fits: the choice depends on nothing but the refit's inputs, so a fold's refit never sees the other fold
  and any process (``distributed``) computes the same weights.
  Solved as ``W^T = W0^T + (Z_C^T Z_C + lam I)^-1 Z_C^T (T_R - Z_C W0^T)`` from one eigendecomposition of the
  smaller Gram matrix of ``Z_C`` (``Ridge``), whose cost follows ``min(rows, |C|)`` (few calibration rows make
  wide blocks cheap) and which serves the whole grid;
- constant rows (they read nothing) take the mean of their target as bias (zero output without a bias);
- entries outside the plan are zero.
The plain cut keeps ``W0`` inside the plan, zero outside, and the bias as it was.

Low rank (``Refitter.low_rank``, reduced-rank regression): the ridge solution toward ``W0`` over all columns
(``LOW_RANK_RIDGE``), ``B = W0^T + (Z^T Z + lam I)^-1 Z^T (T - Z W0^T)``, projected onto the top ``r``
eigenvectors ``V_r`` of its fitted outputs' Gram ``B^T Z^T Z B``: ``W_r = (B V_r V_r^T)^T``, the best rank-r
map from ``Z`` to ``T``; the bias is unregularised as above. Given the dense activations themselves
(``Z = X``) it is the activation-whitened truncated SVD of ``W0`` (SVD-LLM), the plain cut of low rank.
The basis (``B`` and the eigenvectors) is computed once per layer and activation set and serves every rank.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from onnx_decomp.search.network import Layer, Stored
from onnx_decomp_passes import BlockPlan

FLOOR = 1e-9  # lam never falls below this share of the inputs' mean energy (ridge 0: least squares)
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
CV_OUTPUTS = 64
LOW_RANK_RIDGE = RIDGE_GRID[1]
KEPT_BASES = 16  # low-rank bases remembered (the newest), each for one layer and activation set


def plain_cut(layer: Layer, plan: BlockPlan) -> Stored:
    """The original weights inside the plan, zeros outside; the bias unchanged."""
    return layer.kept(plan), layer.stored_bias


class Ridge:
    """``Z [rows, c]`` decomposed once for ridge solutions at any strength: the eigendecomposition of the
    smaller of its two Gram matrices (``Z^T Z`` when rows >= c, else ``Z Z^T``), as cheap as the thin SVD's
    cost ``min(rows, c)`` promises and several times faster to compute."""

    def __init__(self, z: np.ndarray):
        self.z, self.primal = z, z.shape[0] >= z.shape[1]
        self.values, self.vectors = np.linalg.eigh(z.T @ z if self.primal else z @ z.T)
        self.values = np.maximum(self.values, 0.0)

    @property
    def energy(self) -> float:
        """``||Z||_F^2``."""
        return float(self.values.sum())

    def step(self, residual: np.ndarray, lam: float) -> np.ndarray:
        """``(Z^T Z + lam I)^-1 Z^T residual``: the ridge's move away from the prior."""
        inverse = 1.0 / (self.values + lam)
        if self.primal:
            return self.vectors @ (inverse[:, None] * (self.vectors.T @ (self.z.T @ residual)))
        return self.z.T @ (self.vectors @ (inverse[:, None] * (self.vectors.T @ residual)))


def _lam(ridge: float, energy: float) -> float:
    return max(ridge * energy, FLOOR * (energy or 1.0))


def cross_validated_ridge(z: np.ndarray, residual: np.ndarray, half: np.ndarray) -> float:
    """The ``RIDGE_GRID`` value whose fit on one half of the rows of ``z [rows, |C|]`` predicts the
    ``residual [rows, outputs]`` of the other half best (module rule)."""
    errors = np.zeros(len(RIDGE_GRID))
    for fit, test in ((half, ~half), (~half, half)):
        ridge_of = Ridge(z[fit])
        energy = ridge_of.energy / z.shape[1]
        for position, ridge in enumerate(RIDGE_GRID):
            errors[position] += np.sum((z[test] @ ridge_of.step(residual[fit], _lam(ridge, energy)) - residual[test]) ** 2)
    return RIDGE_GRID[int(np.argmin(errors))]


class Refitter:
    """The module rule with a fixed ``ridge``, or a ridge cross-validated at every refit."""

    def __init__(self, ridge: Optional[float] = None, seed: int = 0):
        self.ridge, self.seed = ridge, seed
        self._bases: dict[tuple[int, int, int], tuple] = {}  # (layer, id(dense), id(rows)) -> low-rank basis

    @staticmethod
    def _target(layer: Layer, dense: np.ndarray, w0: np.ndarray) -> np.ndarray:
        """``X_dense W0^T + b0`` (float32, as ONNX Runtime computes it), computed at every refit: kept, the
        targets of every layer and fold would be as large as the refit's activation rows."""
        target = dense.astype(np.float32, copy=False) @ w0.T
        target += layer.bias_vector().astype(np.float32)
        return target

    def __call__(self, layer: Layer, plan: BlockPlan, dense: np.ndarray, cut: np.ndarray) -> Stored:
        """Refit ``layer`` under ``plan`` from paired activation rows ``dense`` and ``cut`` (``[rows, n_in]``)."""
        w0, b0 = layer.matrix(dtype=np.float32), layer.bias_vector()
        z = cut.astype(np.float64)
        target = self._target(layer, dense, w0)
        with_bias = layer.bias is not None
        z_mean, t_mean = (z.mean(0), target.mean(0, dtype=np.float64)) if with_bias else \
            (np.zeros(z.shape[1]), np.zeros(len(b0)))
        z -= z_mean
        target = target - t_mean
        rng = np.random.default_rng(self.seed)
        half = np.zeros(len(z), bool)
        half[rng.permutation(len(z))[:len(z) // 2]] = True
        blocks, bias = [], t_mean.copy()
        for branch in plan.branches:
            rows, cols = branch.rows, branch.cols
            inputs, prior = z[:, cols], w0[np.ix_(rows, cols)].T.astype(np.float64)
            residual = target[:, rows] - inputs @ prior
            ridge = self.ridge
            if ridge is None:
                some = slice(None) if len(rows) <= CV_OUTPUTS else \
                    np.sort(rng.choice(len(rows), CV_OUTPUTS, replace=False))
                ridge = cross_validated_ridge(inputs, residual[:, some], half) if len(z) >= 4 else RIDGE_GRID[1]
            ridge_of = Ridge(inputs)
            solution = prior + ridge_of.step(residual, _lam(ridge, ridge_of.energy / len(cols)))
            blocks.append((rows, cols, solution.T.astype(np.float32)))
            bias[rows] = t_mean[rows] - solution.T @ z_mean[cols]
        return layer.store_blocks(blocks, bias if with_bias else None)

    def _basis(self, layer: Layer, dense: np.ndarray, rows: np.ndarray) -> tuple:
        """(dense, rows, B, z_mean, t_mean, eigenvectors ascending) of the low-rank rule, cached."""
        key = (layer.index, id(dense), id(rows))
        known = self._bases.get(key)
        if known is not None and known[0] is dense and known[1] is rows:
            return known
        w0 = layer.matrix(dtype=np.float32)
        z, target = rows.astype(np.float64), self._target(layer, dense, w0)
        with_bias = layer.bias is not None
        z_mean, t_mean = (z.mean(0), target.mean(0, dtype=np.float64)) if with_bias else \
            (np.zeros(z.shape[1]), np.zeros(len(w0)))
        z -= z_mean
        target = target - t_mean
        prior = w0.T.astype(np.float64)
        gram = z.T @ z
        lam = _lam(self.ridge if self.ridge is not None else LOW_RANK_RIDGE, float(np.trace(gram)) / len(gram))
        solved = prior + np.linalg.solve(gram + lam * np.eye(len(gram)), z.T @ (target - z @ prior))
        vectors = np.linalg.eigh(solved.T @ gram @ solved)[1]
        if len(self._bases) >= KEPT_BASES:
            del self._bases[next(iter(self._bases))]
        self._bases[key] = known = (dense, rows, solved, z_mean, t_mean, vectors)
        return known

    def low_rank(self, layer: Layer, rank: int, dense: np.ndarray, rows: np.ndarray) -> Stored:
        """The rank-``rank`` weight and bias of the module rule from the activation ``rows`` reaching the layer
        (the cut model's, or ``dense`` itself for the plain cut), against the dense layer on ``dense``."""
        _, _, solved, z_mean, t_mean, vectors = self._basis(layer, dense, rows)
        top = vectors[:, -rank:]
        weight = ((solved @ top) @ top.T).T
        return layer.store(weight, t_mean - weight @ z_mean if layer.bias is not None else None)
