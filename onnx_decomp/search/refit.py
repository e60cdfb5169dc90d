"""Refit: after a cut, each block's weights and bias are refitted by ridge least squares so that the cut
layer reproduces the dense layer on calibration activations (design.md section 5; beyond the paper).

Rule, for a layer with plan P and original effective weight ``W0`` and bias ``b0``:
- target ``T = X_dense W0^T + b0``: the dense layer's output on the original model's activations;
- inputs ``Z = X_cut``: the activations reaching the layer with the earlier cuts in force (the decomposed
  model's own activations, as GPTQ and SparseGPT feed them);
- per branch (rows R, columns C): ``W[R, C] = argmin ||Z_C W^T + 1 b^T - T_R||^2 + lam ||W - W0[R, C]||^2``,
  the bias unregularised (Z and T centred; a layer without a bias solves the uncentred problem). The ridge
  pulls toward the original weights, not toward zero, so that with few samples the refit stays near the
  plain cut instead of collapsing; ``lam = ridge * trace(Z_C^T Z_C) / |C|``, relative to the inputs' mean
  energy (default ridge 0.01, ``config.AnnealConfig``);
- constant rows (they read nothing) take the mean of their target as bias (zero output without a bias);
- entries outside the plan are zero.
The plain cut keeps ``W0`` inside the plan, zero outside, and the bias as it was.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from onnx_decomp.search.network import Layer, Stored
from onnx_decomp_passes import BlockPlan

FLOOR = 1e-9  # lam never falls below this share of the inputs' mean energy (ridge 0: least squares)


def plain_cut(layer: Layer, plan: BlockPlan) -> Stored:
    """The original weights inside the plan, zeros outside; the bias unchanged."""
    return layer.store(layer.matrix() * plan.mask(), layer.bias_vector())


def refit(layer: Layer, plan: BlockPlan, dense: np.ndarray, cut: np.ndarray, ridge: float) -> Stored:
    """The module rule, from paired activation rows ``dense`` and ``cut`` (``[rows, n_in]``)."""
    w0, b0 = layer.matrix(), layer.bias_vector()
    z = cut.astype(np.float64)
    target = dense.astype(np.float64) @ w0.T + b0
    with_bias = layer.bias is not None
    z_mean, t_mean = (z.mean(0), target.mean(0)) if with_bias else (np.zeros(z.shape[1]), np.zeros(len(b0)))
    z, target = z - z_mean, target - t_mean
    gram, cross = z.T @ z, z.T @ target  # [n_in, n_in], [n_in, n_out]
    weight, bias = np.zeros_like(w0), t_mean.copy()
    for branch in plan.branches:
        rows, cols = branch.rows, branch.cols
        block = gram[np.ix_(cols, cols)]
        energy = np.trace(block) / len(cols)
        lam = max(ridge * energy, FLOOR * (energy or 1.0))
        solution = scipy.linalg.solve(block + lam * np.eye(len(cols)),
                                      cross[np.ix_(cols, rows)] + lam * w0[np.ix_(rows, cols)].T, assume_a="pos")
        weight[np.ix_(rows, cols)] = solution.T
        bias[rows] = t_mean[rows] - solution.T @ z_mean[cols]
    return layer.store(weight, bias if with_bias else None)
