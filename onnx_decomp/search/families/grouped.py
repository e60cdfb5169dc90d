"""The grouped family: a Conv of one group cut into k blocks of channels, block-diagonal once its input and
output channels are permuted; the rewrite runs it as one Conv of k groups or as k Conv branches, whichever
ONNX Runtime measures faster (``planning.conv``), with the permutations folded into the neighbouring weights.

Rungs ``k = 2, 4, 8, ...`` up to half the smaller channel count (``block_counts``; with ``--blocks K`` that
count alone). A channel pair's importance is its entries' (``importance``: evidence x |w| x input norm) summed
over the kernel window; spectral co-clustering of the ``[C_out, C_in]`` pairs, balanced (``planning.coclustering``:
every block ``n // k`` or ``n // k + 1`` channels, so equal blocks where k divides both counts, as a grouped
Conv needs), gives the output and input channels of each block. The plan keeps ``[outputs of b] x [the windows
of the inputs of b]``; the cut is a block cut, refitted per block on the Conv's patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_decomp.planning.coclustering import spectral_cocluster
from onnx_decomp.planning.partition import Partition
from onnx_decomp.search.families.base import BlockCut, Family, Norms, SearchSpace, Structure, Unit, block_counts
from onnx_decomp.search.importance import importance
from onnx_decomp_passes import BlockPlan, Branch


@dataclass
class GroupedUnit(Unit):
    seed: int = 0
    family = "grouped"

    def label(self, rung: int) -> str:
        return f"k={self.rungs[rung]} channel groups"

    def structure(self, rung: int, norms: Norms) -> Structure:
        k, layer = self.rungs[rung], self.layers[0]
        op = layer.op
        pairs = importance(layer, self.evidence[layer.site], norms[layer.site]).reshape(op.shape[0], -1, op.window)
        rows, channels = spectral_cocluster(pairs.sum(-1), k, seed=self.seed, balanced=True)
        plan = BlockPlan(*layer.shape, tuple(Branch(np.flatnonzero(rows == b),
                                                    op.input_columns(np.flatnonzero(channels == b))) for b in range(k)))
        return Structure(self.label(rung), {layer.site: BlockCut(plan)}, Partition({"inputs": channels, "outputs": rows}))


class Grouped(Family):
    name = "grouped"

    def units(self, space: SearchSpace) -> list[Unit]:
        units = []
        for layer in (layer for layer in space.network.layers if layer.conv):
            rungs = block_counts(min(layer.shape[0], layer.shape[1] // layer.op.window), space.config)
            if rungs:
                units.append(GroupedUnit([layer], rungs, space.evidence_of([layer]), space.config.seed))
        return units
