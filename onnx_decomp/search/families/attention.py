"""The attention family: the query, key, value and output projections of a multi-head attention block.

Rungs ``k = 2, 4, ...`` up to the number of heads (and half the smallest index space): k groups of whole
heads, each reading its own inputs and writing its own outputs (``planning.attention``), the four layers cut
consistently. The projections are single units too. Every structure drops what carries nothing.

Finding the blocks, rules (what a block is; anything else stays single layers and chains):
- Projections: three layers that read the same tensor, have the same number of outputs ``n`` and whose
  results (the bias Add's output where the layer has one) are each read by a ``Reshape`` whose inferred
  output shape ends in ``[H, n / H]`` with ``H >= 2`` heads, the same ``H`` for all three.
- Data flow: from each projection's result, forward through every node except layers (annealable
  MatMul/Gemm nodes, where the walk stops) and ``Shape``/``Size`` (their outputs carry no values of the
  tensor), noting whether the path crossed a ``Softmax``.
- The output projection o: the one layer all three reach, with ``n`` inputs. The value projection v reaches
  it without crossing a ``Softmax``; the other two (query and key, in either order) reach it only through
  one. A triple that reaches any other layer, or two layers, is no attention block.
The exporter's attention must keep heads as the second-to-last axis of that Reshape and concatenate them
back in the same order before o (PyTorch's ``scaled_dot_product_attention`` and hand-written attention
do). Nothing here is needed for exactness: any plan is rewritten exactly; a block found wrongly only makes
its head-aligned cut cost more fidelity, which the gate measures.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Mapping, Optional, Sequence


from onnx_decomp.planning.attention import head_groups
from onnx_decomp.planning.partition import Partition
from onnx_decomp.search.families.base import (BlockCut, Family, Norms, SearchSpace, Structure, Unit, block_counts,
                                              block_label)
from onnx_decomp.search.importance import importance, live_columns
from onnx_decomp.search.network import Layer

if TYPE_CHECKING:  # the graph's tensors and nodes are read through their attributes only
    import onnx_graphsurgeon as gs

OPAQUE = {"Shape", "Size"}


@dataclass(frozen=True)
class AttentionBlock:
    """Layer indices of the query and key projections, the value projection and the output projection."""

    query_key: tuple[int, int]
    value: int
    output: int
    heads: int

    @property
    def layers(self) -> tuple[int, int, int, int]:
        return (*self.query_key, self.value, self.output)


def _result(layer: Layer) -> gs.Variable:
    """The tensor holding a layer's result: its bias Add's output for a MatMul with a bias."""
    bias = layer.output_bias
    return bias.node.outputs[0] if bias is not None and bias.node is not layer.op.node else layer.op.node.outputs[0]


def _heads(tensor: gs.Variable, width: int, shapes: Mapping[str, list]) -> Optional[int]:
    """H when a Reshape of ``tensor`` splits its last axis into ``[H, width / H]`` (rule 1)."""
    for node in tensor.outputs:
        shape = shapes.get(node.outputs[0].name) if node.op == "Reshape" else None
        if shape and len(shape) >= 2 and all(isinstance(d, int) for d in shape[-2:]):
            heads, dim = shape[-2:]
            if heads >= 2 and heads * dim == width:
                return heads
    return None


def _reached(tensor: gs.Variable, layer_nodes: Mapping[int, int]) -> dict[int, bool]:
    """Layer index -> whether every path to it from ``tensor`` crossed a Softmax (rule 2)."""
    reached: dict[int, bool] = {}
    seen, queue = set(), deque([(tensor, False)])
    while queue:
        current, softmax = queue.popleft()
        for node in current.outputs:
            if id(node) in layer_nodes:
                index = layer_nodes[id(node)]
                reached[index] = reached.get(index, True) and softmax
                continue
            if node.op in OPAQUE:
                continue
            crossed = softmax or node.op == "Softmax"
            for output in node.outputs:
                if (id(output), crossed) not in seen:
                    seen.add((id(output), crossed))
                    queue.append((output, crossed))
    return reached


def find_attention(layers: Sequence[Layer], shapes: Mapping[str, list]) -> list[AttentionBlock]:
    """Every attention block of the module rules among ``layers``, in topological order of their output
    projections."""
    layer_nodes = {id(layer.op.node): layer.index for layer in layers}
    by_index = {layer.index: layer for layer in layers}
    by_input: dict[tuple[int, int], list[int]] = {}
    for layer in layers:
        by_input.setdefault((id(layer.op.node.inputs[0]), layer.shape[0]), []).append(layer.index)
    blocks, used = [], set()
    for (_, width), members in by_input.items():
        for triple in combinations(members, 3):
            if used & set(triple):
                continue
            results = {i: _result(by_index[i]) for i in triple}
            heads = {_heads(results[i], width, shapes) for i in triple}
            if len(heads) != 1 or None in heads:
                continue
            reached = {i: _reached(results[i], layer_nodes) for i in triple}
            targets = {target for found in reached.values() for target in found}
            if len(targets) != 1:
                continue
            (output,) = targets
            values = [i for i in triple if reached[i][output] is False]
            if len(values) != 1 or by_index[output].shape[1] != width:
                continue
            query_key = tuple(i for i in triple if i != values[0])
            blocks.append(AttentionBlock(query_key, values[0], output, heads.pop()))
            used |= set(triple)
    return sorted(blocks, key=lambda block: block.output)


@dataclass
class AttentionUnit(Unit):
    heads: int = 0
    seed: int = 0
    balanced: bool = True
    family = "attention"

    @property
    def name(self) -> str:
        return f"{super().name} ({self.heads} heads)"

    def label(self, rung: int) -> str:
        return block_label(self.rungs[rung], self.balanced)

    def structure(self, rung: int, norms: Norms) -> Structure:
        scores = [importance(layer, self.evidence[layer.site], norms[layer.site]) for layer in self.layers]
        groups = head_groups(scores[:3], scores[3], self.heads, self.rungs[rung], self.seed, self.balanced)
        rows = groups.head_rows(self.layers[0].shape[0] // self.heads)
        partition = Partition({"inputs": groups.inputs, "heads": rows, "outputs": groups.outputs})
        spaces = [("inputs", "heads")] * 3 + [("heads", "outputs")]
        cuts = {layer.site: BlockCut(partition.plan(reads, writes, layer.live_rows, live_columns(norms[layer.site])))
                for layer, (reads, writes) in zip(self.layers, spaces)}
        return Structure(self.label(rung), cuts, partition)


class Attention(Family):
    name = "attention"

    def units(self, space: SearchSpace) -> list[Unit]:
        network, config = space.network, space.config
        units = []
        for block in find_attention(network.linear, space.shapes):
            layers = [network.layers[i] for i in block.layers]
            rungs = [k for k in block_counts(min(min(layer.shape) for layer in layers), config) if k <= block.heads]
            if rungs:
                units.append(AttentionUnit(layers, rungs, space.evidence_of(layers), block.heads, config.seed,
                                           config.block.balanced))
        return units
