"""A model cut into blocks of layers that can be annealed one at a time (``drivers.by_block``).

Rules (on the main graph of the normalised model, nodes in topological order; layers as ``search.network``
finds them):
- A tensor ``t`` is a cut when, with ``A`` the nodes ``t`` depends on (its producer and their ancestors),
  ``A`` holds a layer and the other nodes hold one too, no node of ``A`` writes a graph output, and every
  tensor another node reads from ``A`` is ``t`` itself or a "side" tensor: one that depends on no weight
  (no layer, no initializer of more than ``SMALL_TENSOR`` elements; an attention mask or position ids made
  from an input's shape), which a later block computes again from the graph inputs. So all that the rest
  of the model takes from the weights before ``t`` passes through ``t``.
- Of cuts with no layer between them only the first is kept (the residual stream, not its normalisation), and
  of the others only those that depend on the cut kept before them.
- A block is what lies between two consecutive cuts: its own nodes, plus the side nodes it needs again. Its
  inputs are the cut it starts from (none for the first block) and the graph inputs it reads; its outputs
  the cut it ends at, or the graph outputs for the last block. In a pre-norm transformer the cuts are the
  residual Adds: each layer's attention half and FFN half are blocks of their own (the first block also
  holds the embeddings, the last the final norm and head); in a chain of linear layers each layer is one,
  cut at its output (its activation goes with the layer after it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnx_decomp.io.shapes import SMALL_TENSOR
from onnx_decomp.io.walk import iter_graphs


@dataclass
class Block:
    """One block (module rules): node positions in graph order (side nodes included), its own nodes, its
    inputs and outputs (tensor names) and its layers' node names."""

    index: int
    nodes: list[int]
    own: list[int]
    inputs: list[str]
    outputs: list[str]
    layers: list[str]


def _bits(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def _ancestry(graph: onnx.GraphProto) -> tuple[dict[str, int], list[int]]:
    """Each tensor's producer position, and each node's ancestors (itself included) as a bit set."""
    producer, ancestors = {}, []
    for i, node in enumerate(graph.node):
        mask = 1 << i
        for name in node.input:
            if name in producer:
                mask |= ancestors[producer[name]]
        ancestors.append(mask)
        producer.update({name: i for name in node.output if name})
    return producer, ancestors


def _weighted(graph: onnx.GraphProto, layers: set[str]) -> int:
    """The nodes that are layers or read an initializer of more than ``SMALL_TENSOR`` elements, as a bit set."""
    large = {t.name for t in graph.initializer if int(np.prod(t.dims)) > SMALL_TENSOR}
    return sum(1 << i for i, node in enumerate(graph.node) if node.name in layers or _referenced(node) & large)


def find_cuts(graph: onnx.GraphProto, layers: set[str]) -> list[str]:
    """The cut tensors of the module rules, in graph order."""
    producer, ancestors = _ancestry(graph)
    layer_mask = sum(1 << i for i, node in enumerate(graph.node) if node.name in layers)
    weighted = _weighted(graph, layers)
    everything = (1 << len(graph.node)) - 1
    reads = [(producer[name], k, name) for k, node in enumerate(graph.node) for name in node.input
             if name in producer]
    writes_output = sum(1 << producer[o.name] for o in graph.output if o.name in producer)
    cuts, kept = [], None
    for i, node in enumerate(graph.node):
        before = ancestors[i]
        if not before & layer_mask or not everything & ~before & layer_mask or before & writes_output:
            continue
        for t in (name for name in node.output if name):
            crossing = {name for j, k, name in reads if before >> j & 1 and not before >> k & 1}
            if any(name != t and ancestors[producer[name]] & weighted for name in crossing):
                continue
            if kept is None or (ancestors[kept] & ~before == 0 and before & ~ancestors[kept] & layer_mask):
                cuts.append(t)
                kept = i
    return cuts


def _referenced(node: onnx.NodeProto) -> set[str]:
    """Tensor names a node reads, those its subgraphs read from the outer scope included (over-approximated)."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in [attribute.g, *attribute.graphs]:
            names |= {name for sub in iter_graphs(graph) for inner in sub.node for name in inner.input}
    return names


def find_blocks(graph: onnx.GraphProto, layers: set[str]) -> list[Block]:
    """The blocks of the module rules, in graph order (one block when there is no cut)."""
    producer, ancestors = _ancestry(graph)
    cuts = find_cuts(graph, layers)
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [v.name for v in graph.input if v.name not in initializers]
    done, blocks = 0, []
    for index, end in enumerate([*cuts, None]):
        own_mask = (ancestors[producer[end]] if end is not None else (1 << len(graph.node)) - 1) & ~done
        own = _bits(own_mask)
        start = cuts[index - 1] if index else None
        side = 0
        for k in own:
            for name in _referenced(graph.node[k]):
                if name in producer and not own_mask >> producer[name] & 1 and name != start:
                    side |= ancestors[producer[name]]
        nodes = _bits(own_mask | side)
        read = set().union(*(_referenced(graph.node[k]) for k in nodes))
        inputs = ([start] if start else []) + [name for name in graph_inputs if name in read]
        outputs = [end] if end is not None else [o.name for o in graph.output]
        blocks.append(Block(index, nodes, own, inputs, outputs,
                            [graph.node[k].name for k in own if graph.node[k].name in layers]))
        done |= own_mask
    return blocks


def block_model(model: onnx.ModelProto, block: Block, types: dict) -> onnx.ModelProto:
    """The block as a model of its own: its nodes, the initializers they read (as ``model`` holds them:
    external-data references stay references), inputs typed from ``types`` (``io.shapes.symbolic_types``),
    and ``model``'s opsets, IR version, fields and metadata."""
    graph = model.graph
    nodes = [graph.node[k] for k in block.nodes]
    read = set().union(*(_referenced(node) for node in nodes))
    values = {v.name: v for v in [*graph.input, *graph.output, *graph.value_info]}

    def typed(name: str) -> onnx.ValueInfoProto:
        if name in values and values[name].type.tensor_type.elem_type:
            return values[name]
        dtype, shape = types[name]
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape)

    sub = helper.make_graph(nodes, graph.name, [typed(name) for name in block.inputs],
                            [typed(name) for name in block.outputs],
                            [t for t in graph.initializer if t.name in read])
    result = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(result, name, getattr(model, name))
    result.metadata_props.extend(model.metadata_props)
    result.functions.extend(model.functions)
    return result
