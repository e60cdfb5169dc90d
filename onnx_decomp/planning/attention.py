"""Cut multi-head attention into k independent groups of heads, each reading its own group of input features
and writing its own group of output features.

An attention block: projections ``Wq, Wk, Wv [H * dh, d]`` (orientation ``[n_out, n_in]``; head h owns rows
``h * dh .. (h + 1) * dh - 1``, as a Reshape of the last axis into ``[H, dh]`` gives them) read the same
input, and ``Wo [d_out, H * dh]`` reads the heads' outputs concatenated in the same order. Heads never mix
with each other between the projections and ``Wo``, so cutting whole heads apart is the only way to cut the
block into independent sub-networks: a group of heads is then a small attention of its own.

Rules (the grouping is our decision; the paper has no attention-specific rule):
1. Affinity of head h to input j: ``a_in[h, j] = sum over the head's rows r of (Sq + Sk + Sv)[r, j]`` and of
   head h to output i: ``a_out[h, i] = sum over the head's columns c of So[i, c]``, where ``S`` is each
   projection's importance (``search.importance``: evidence times ``|w|`` times input norm), every one
   scaled to unit total so that no projection outweighs the others by its size.
2. Co-cluster heads against inputs and outputs together: the spectral co-clustering of ``[a_in, a_out]``
   (``[H, d + d_out]``; ``coclustering`` rule 2) places heads, inputs and outputs in one embedding; heads,
   inputs and outputs are each assigned to the nearest of k centers, balanced separately (``coclustering``
   rule 4: every group takes ``H / k`` heads and its share of inputs and of outputs).
3. Plans: q, k and v keep ``[rows of the heads of group b] x [inputs of group b]``, o keeps ``[outputs of
   group b] x [columns of the heads of group b]``: the four projections cut consistently, k branches each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnx_decomp.planning.coclustering import assignment, blocks_plan, cocluster_closeness
from onnx_decomp_passes import BlockPlan


@dataclass(frozen=True)
class HeadGroups:
    """Group labels (values in ``[0, k)``) of the heads, the inputs and the outputs of one attention block."""

    heads: np.ndarray  # [H]
    inputs: np.ndarray  # [d]
    outputs: np.ndarray  # [d_out]

    def head_rows(self, head_dim: int) -> np.ndarray:
        """The group of every projection row (every head's ``head_dim`` rows take its group)."""
        return np.repeat(self.heads, head_dim)

    def plans(self, head_dim: int) -> tuple[BlockPlan, BlockPlan, BlockPlan, BlockPlan]:
        """Plans for q, k, v and o (rule 3)."""
        rows = self.head_rows(head_dim)
        projection = blocks_plan(rows, self.inputs)
        return projection, projection, projection, blocks_plan(self.outputs, rows)


def head_affinity(projections: Sequence[np.ndarray], output: np.ndarray, heads: int) -> np.ndarray:
    """``[a_in, a_out]`` (rule 1) from the importance of q, k, v ``[H * dh, d]`` and of o ``[d_out, H * dh]``."""
    width = output.shape[1]
    if width % heads or any(p.shape[0] != width for p in projections):
        raise ValueError(f"{heads} heads do not split projections {[p.shape for p in projections]} and "
                         f"output {output.shape} alike")
    dim = width // heads

    def unit(score: np.ndarray) -> np.ndarray:
        score = np.abs(np.asarray(score, dtype=np.float64))
        return score / max(float(score.sum()), np.finfo(np.float64).tiny)

    into = sum(unit(p) for p in projections).reshape(heads, dim, -1).sum(1)
    out_of = unit(output).reshape(output.shape[0], heads, dim).sum(2).T
    return np.hstack([into, out_of])


def head_groups(projections: Sequence[np.ndarray], output: np.ndarray, heads: int, k: int, seed: int = 0,
                balanced: bool = True) -> HeadGroups:
    """The k groups of rules 1 and 2."""
    if not 1 <= k <= heads:
        raise ValueError(f"k={k} must lie in [1, {heads}] for {heads} heads")
    affinity = head_affinity(projections, output, heads)
    d = projections[0].shape[1]
    if k == 1:
        return HeadGroups(np.zeros(heads, np.int64), np.zeros(d, np.int64), np.zeros(output.shape[0], np.int64))
    rows, cols = cocluster_closeness(affinity, k, seed=seed)
    return HeadGroups(assignment(rows, balanced), assignment(cols[:d], balanced), assignment(cols[d:], balanced))
