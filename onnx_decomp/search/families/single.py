"""The single-layer family: one MatMul/Gemm cut into blocks.

Rungs: ``trim`` (rows that carry nothing become constant rows, inputs that carry nothing unused;
``importance``), then ``k = 2, 4, 8, ...`` balanced blocks from spectral co-clustering of the entries'
importance (``planning.coclustering``); with ``BlockSettings.blocks`` the ladder holds that count alone (no
trim). Every structure drops what carries nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_decomp.planning.coclustering import spectral_cocluster
from onnx_decomp.planning.partition import Partition
from onnx_decomp.search.families.base import (BlockCut, Family, Norms, SearchSpace, Structure, Unit, block_counts,
                                              block_label)
from onnx_decomp.search.importance import importance, live_columns


@dataclass
class SingleUnit(Unit):
    seed: int = 0
    balanced: bool = True
    family = "single"

    def label(self, rung: int) -> str:
        return block_label(self.rungs[rung], self.balanced)

    def structure(self, rung: int, norms: Norms) -> Structure:
        value, layer = self.rungs[rung], self.layers[0]
        norm = norms[layer.site]
        if value == 1:
            rows, cols = np.zeros(layer.shape[0], np.int64), np.zeros(layer.shape[1], np.int64)
        else:
            scores = importance(layer, self.evidence[layer.site], norm, dtype=np.float64)
            rows, cols = spectral_cocluster(scores, value, seed=self.seed, balanced=self.balanced, overwrite=True)
        partition = Partition({"inputs": cols, "outputs": rows})
        plan = partition.plan("inputs", "outputs", layer.live_rows, live_columns(norm))
        return Structure(self.label(rung), {layer.site: BlockCut(plan)}, partition)


class Single(Family):
    name = "single"

    def units(self, space: SearchSpace) -> list[Unit]:
        config = space.config
        trim = [] if config.block.blocks is not None else [1]
        units = []
        for layer in space.network.linear:
            rungs = trim + block_counts(min(layer.shape), config)
            if rungs:
                units.append(SingleUnit([layer], rungs, space.evidence_of([layer]), config.seed,
                                        config.block.balanced))
        return units
