"""The square family: a layer whose input and output share one index space, planned in the paper's directed
view (``planning.directed``: strong components, levels, weak components).

A layer is square when its output (or its bias Add's output) is added to its own input (a residual map), or
when its node is named in ``SquareSettings.nodes``. Rungs ``drop 2%, 5%, ...``: the weakest entries carrying
that share of the total importance are dropped and the rest planned in the directed view (branches may read
overlapping columns). A square layer is a single unit too. With ``BlockSettings.blocks`` the family has no
rungs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.planning.directed import directed_structure
from onnx_decomp.search.families.base import BlockCut, Family, Norms, SearchSpace, Structure, Unit
from onnx_decomp.search.families.single import SingleUnit
from onnx_decomp.search.importance import importance, live_columns
from onnx_decomp.search.network import Layer

SHARES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass
class SquareUnit(SingleUnit):
    family = "square"

    @property
    def name(self) -> str:
        return f"{super().name} (directed)"

    def label(self, rung: int) -> str:
        return f"drop {self.rungs[rung]:.0%}"

    def structure(self, rung: int, norms: Norms) -> Structure:
        layer = self.layers[0]
        score = importance(layer, self.evidence[layer.site], norms[layer.site])
        ordered = np.sort(score, axis=None)
        dropped = int(np.searchsorted(np.cumsum(ordered, dtype=np.float64),
                                      self.rungs[rung] * ordered.sum(dtype=np.float64), side="right"))
        cut = ordered[dropped - 1] if dropped else -np.inf
        keep = (score > cut) & layer.live_rows[:, None] & live_columns(norms[layer.site])[None, :]
        return Structure(self.label(rung), {layer.site: BlockCut(directed_structure(keep).plan)})


def residual_layers(layers: Sequence[Layer]) -> set[int]:
    """Square layers whose output (or their bias Add's output) is added to their own input."""
    found = set()
    for layer in layers:
        if layer.shape[0] != layer.shape[1]:
            continue
        node, bias = layer.op.node, layer.output_bias
        outputs = [node.outputs[0]] + ([bias.node.outputs[0]] if bias is not None and bias.node is not node else [])
        readers = [reader for output in outputs for reader in output.outputs]
        if any(reader.op == "Add" and node.inputs[0] in reader.inputs for reader in readers):
            found.add(layer.index)
    return found


class Square(Family):
    name = "square"

    def units(self, space: SearchSpace) -> list[Unit]:
        network, config = space.network, space.config
        by_node = {layer.node: layer for layer in network.linear}
        unknown = sorted(set(config.square.nodes) - set(by_node))
        if unknown:
            raise UnsupportedConstructError(f"square: {unknown} name no annealable MatMul/Gemm node")
        units = []
        for index in sorted(residual_layers(network.linear) | {by_node[name].index for name in config.square.nodes}):
            layer = network.layers[index]
            if layer.shape[0] != layer.shape[1]:
                raise UnsupportedConstructError(f"square: node {layer.node!r} is not square")
            if config.block.blocks is None:
                units.append(SquareUnit([layer], list(SHARES), space.evidence_of([layer]), config.seed,
                                        config.block.balanced))
        return units
