"""Multi-head attention blocks found among the annealable layers.

Rules (what a block is; anything else stays single layers and chains):
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
from typing import Mapping, Optional

import onnx

from onnx_decomp.search.network import Network

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


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _result(network: Network, index: int, nodes: Mapping[str, onnx.NodeProto], consumers) -> str:
    """The tensor holding a layer's result: its bias Add's output for a MatMul with a bias."""
    layer = network.layers[index]
    output = nodes[layer.node].output[0]
    if layer.bias and nodes[layer.node].op_type == "MatMul":
        adds = [n for n in consumers.get(output, []) if n.op_type == "Add"]
        output = adds[0].output[0] if len(adds) == 1 else output
    return output


def _heads(tensor: str, width: int, consumers, shapes: Mapping[str, list]) -> Optional[int]:
    """H when a Reshape of ``tensor`` splits its last axis into ``[H, width / H]`` (rule 1)."""
    for node in consumers.get(tensor, []):
        shape = shapes.get(node.output[0]) if node.op_type == "Reshape" else None
        if shape and len(shape) >= 2 and all(isinstance(d, int) for d in shape[-2:]):
            heads, dim = shape[-2:]
            if heads >= 2 and heads * dim == width:
                return heads
    return None


def _reached(tensor: str, layer_nodes: Mapping[str, int], consumers) -> dict[int, bool]:
    """Layer index -> whether every path to it from ``tensor`` crossed a Softmax (rule 2)."""
    reached: dict[int, bool] = {}
    seen, queue = set(), deque([(tensor, False)])
    while queue:
        name, softmax = queue.popleft()
        for node in consumers.get(name, []):
            if node.name in layer_nodes:
                index = layer_nodes[node.name]
                reached[index] = reached.get(index, True) and softmax
                continue
            if node.op_type in OPAQUE:
                continue
            crossed = softmax or node.op_type == "Softmax"
            for output in node.output:
                if (output, crossed) not in seen:
                    seen.add((output, crossed))
                    queue.append((output, crossed))
    return reached


def find_attention(network: Network, shapes: Mapping[str, list]) -> list[AttentionBlock]:
    """Every attention block of the module rules, in topological order of their output projections."""
    graph = network.proto.graph
    nodes, consumers = {n.name: n for n in graph.node}, _consumers(graph)
    layer_nodes = {layer.node: layer.index for layer in network.layers}
    by_input: dict[tuple[str, int], list[int]] = {}
    for layer in network.layers:
        by_input.setdefault((layer.input, layer.shape[0]), []).append(layer.index)
    blocks, used = [], set()
    for (_, width), members in by_input.items():
        for triple in combinations(members, 3):
            if used & set(triple):
                continue
            results = {i: _result(network, i, nodes, consumers) for i in triple}
            heads = {_heads(results[i], width, consumers, shapes) for i in triple}
            if len(heads) != 1 or None in heads:
                continue
            reached = {i: _reached(results[i], layer_nodes, consumers) for i in triple}
            targets = {target for found in reached.values() for target in found}
            if len(targets) != 1:
                continue
            (output,) = targets
            values = [i for i in triple if reached[i][output] is False]
            if len(values) != 1 or network.layers[output].shape[1] != width:
                continue
            query_key = tuple(i for i in triple if i != values[0])
            blocks.append(AttentionBlock(query_key, values[0], output, heads.pop()))
            used |= set(triple)
    return sorted(blocks, key=lambda block: block.output)
