"""The chain family: layers linked through per-feature ops (``onnx_decomp_passes.find_chains``): every linked
pair, and every maximal stack of three or more.

Rungs ``k = 2, 4, ...``: one partition of the inputs, every hidden space and the outputs, by co-clustering the
signed composite of the evidence-weighted weights, the first layer's columns scaled by its input norms
(design.md section 4: init noise cancels along paths; ``planning.coclustering``). ``k`` stops at half the
smallest index space. Every structure drops what carries nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from onnx_decomp.planning.coclustering import Stack
from onnx_decomp.planning.partition import Partition
from onnx_decomp.search.families.base import (BlockCut, Family, Norms, SearchSpace, Structure, Unit, block_counts,
                                              block_label)
from onnx_decomp.search.importance import evidence_weighted, live_columns
from onnx_decomp_passes import find_chains


@dataclass
class ChainUnit(Unit):
    seed: int = 0
    balanced: bool = True
    _stack: Optional[Stack] = field(default=None, repr=False)
    family = "chain"

    def label(self, rung: int) -> str:
        return block_label(self.rungs[rung], self.balanced)

    def release(self) -> None:
        self._stack = None

    def structure(self, rung: int, norms: Norms) -> Structure:
        if self._stack is None:
            self._stack = Stack([evidence_weighted(layer, self.evidence[layer.site]) for layer in self.layers])
        first = self.layers[0]
        labels = self._stack.labels(self.rungs[rung], self.seed, self.balanced, column_scale=norms[first.site])
        partition = Partition.of_chain(labels)
        plans = partition.chain_plans([(layer.live_rows, live_columns(norms[layer.site])) for layer in self.layers])
        return Structure(self.label(rung), {layer.site: BlockCut(plan) for layer, plan in zip(self.layers, plans)},
                         partition)


def stacks(pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Maximal paths of three or more layers through the linked pairs."""
    after, before = dict(pairs), {second: first for first, second in pairs}
    found = []
    for start in after:
        if start in before:
            continue
        path = [start]
        while path[-1] in after:
            path.append(after[path[-1]])
        if len(path) >= 3:
            found.append(path)
    return found


class Chain(Family):
    name = "chain"

    def units(self, space: SearchSpace) -> list[Unit]:
        network, config = space.network, space.config
        by_node = {layer.op.node.name: layer for layer in network.linear}
        pairs = [(by_node[a.node.name].index, by_node[b.node.name].index)
                 for a, b in find_chains([layer.op for layer in network.linear])]
        units = []
        for chain in [list(pair) for pair in pairs] + stacks(pairs):
            layers = [network.layers[i] for i in chain]
            rungs = block_counts(min([layers[0].shape[1]] + [layer.shape[0] for layer in layers]), config)
            if rungs:
                units.append(ChainUnit(layers, rungs, space.evidence_of(layers), config.seed, config.block.balanced))
        return units
