"""How much each weight entry matters, for planning cuts: statistical evidence times effect on the outputs.

Rule (our decision: the paper gives the evidence, Wanda the effect): ``s_ij = e_ij * |w_ij| * ||x_j||``, where
``e_ij`` is the entry's evidence from the statistical analysis (``stats.analyze``: 1 when Benjamini-Hochberg
confirmed it, else ``1 - p_ij``, the chance that an initial draw is smaller in magnitude) and ``||x_j||`` the
L2 norm of input feature j over the original model's tuning activations (Wanda's score). An entry training
confirmed counts with its full effect; an unconfirmed one by how far into its null's tail it lies, so
init-like noise weighs little even where its magnitude is not small; an input that carries nothing on the
data (norm 0) makes its column worth nothing. Chains use the same evidence on signed weights
(``evidence_weighted``): the composite then sums learned paths and cancels noise.

Live columns: an input whose calibration norm is 0 carries nothing (as does a row with no nonzero weight,
``Layer.live_rows``); every structure drops them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from onnx_decomp.search.network import Layer

CHUNK_ROWS = 256  # rows of the importance computed at once


def column_norms(activations: np.ndarray) -> np.ndarray:
    """``||x_j||`` of every input feature over the rows of ``activations [rows, n_in]``."""
    return np.sqrt(np.einsum("ij,ij->j", activations, activations, dtype=np.float64))


def _weighted(matrix: np.ndarray, evidence: Optional[np.ndarray]) -> np.ndarray:
    return matrix if evidence is None else matrix * evidence.astype(np.float32)


def evidence_weighted(layer: Layer, evidence: Optional[np.ndarray]) -> np.ndarray:
    """``e * W`` (signed, effective weight, float32; ``W`` itself without evidence)."""
    return _weighted(layer.matrix(dtype=np.float32), evidence)


def importance(layer: Layer, evidence: Optional[np.ndarray], norms: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``s [n_out, n_in]`` of the module rule, computed in float32 ``CHUNK_ROWS`` rows at a time and stored as
    ``dtype``: no matrix-sized temporary."""
    matrix, scale = layer.matrix(dtype=np.float32), norms.astype(np.float32)[None, :]
    scores = np.empty(matrix.shape, dtype)
    for start in range(0, len(matrix), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        scores[rows] = np.abs(_weighted(matrix[rows], None if evidence is None else evidence[rows])) * scale
    return scores


def live_columns(norms: np.ndarray) -> np.ndarray:
    return norms > 0
