"""Channel pairs of a Conv: the dependency between output channel o and input channel i is the kernel window
``W[o, i - group_start, ...]``, and exists only when i is in o's group.

- A pair's p-value combines its window's entries (``criterion.fisher_combine``); a 1x1 kernel's pair is its
  entry. Decided by Benjamini-Hochberg like entries.
- The channel support ``[C_out, C_in]`` is block diagonal: group g's ``C_out / group`` outputs read its
  ``C_in / group`` inputs only; pairs across groups are absent (never a dependency, never tested).
- A Conv with a constant weight is analysed when its ``group`` divides its output channels; otherwise it is
  left out with the reason.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from onnx_decomp.stats.criterion import fisher_combine
from onnx_decomp_passes import WeightedOp


def pair_p_values(p: np.ndarray, window: int) -> np.ndarray:
    """Entry p-values ``[C_out, C_in / group * window]`` -> pair p-values ``[C_out, C_in / group]``."""
    return fisher_combine(p.reshape(p.shape[0], -1, window), axis=2)


def block_diagonal(pairs: np.ndarray, groups: int, fill=0) -> np.ndarray:
    """Per-group values ``[C_out, C_in / group]`` placed at ``[C_out, C_in]`` (module rule), ``fill`` across
    groups."""
    c_out, per_group = pairs.shape
    full = np.full((c_out, per_group * groups), fill, dtype=pairs.dtype)
    group = np.arange(c_out) // (c_out // groups)
    full[np.arange(c_out)[:, None], group[:, None] * per_group + np.arange(per_group)] = pairs
    return full


def conv_problem(op: WeightedOp) -> Optional[str]:
    """Why a Conv cannot be analysed (module rule), or None."""
    c_out, groups = op.weight.shape[0], op.groups
    return f"group={groups} does not divide its {c_out} output channels" if groups < 1 or c_out % groups else None
