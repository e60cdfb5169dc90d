"""Shards: a chain of MatMul/Gemm layers whose block plans make it independent sub-networks end to end, each
cut out as a graph of its own.

Rule: the chain runs from the graph's one input to its one output. Its first layer alone reads the input,
each layer's features reach the next layer alone through per-feature nodes (``features.feature_space`` with
one consumer), per-feature nodes alone lead from the last layer to the output (each its tensor's one reader,
its other operands constants), and the graph computes nothing else. Every layer has a ``BlockPlan``; a branch
that reads features another branch wrote is joined to it, and each joined group holding branches of the last
layer is a sub-network (branches no later layer reads are dead and left out). Its shard is a graph of one
input (the model's) and one output: a Gather of the input columns its first branches read, then per layer one
MatMul by its sub-weight (the rows its branches write x the features the group carries, zero outside the
plan: a plan is a mask), the layer's bias rows and the per-feature nodes, their constants sliced to the
group's features, up to the output rows it writes. Its output is those rows of the model's output, so the
shards' outputs concatenated and put back in row order are the model's output where its weights are zero
outside the plans. Refused, with the reason, where the chain is not of this form, a weight is stored behind a
Cast, a Gemm's bias is not one value per output, a layer reads or the output holds a feature computed from no
input (a plan's constant row), or fewer than two sub-networks reach the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Union

import numpy as np
import onnx_graphsurgeon as gs
from scipy.cluster.hierarchy import DisjointSet

from .features import feature_space, per_feature_constants
from .ops import WeightedOp, find_weighted_ops, stored_values
from .plan import BlockPlan
from .site import Site


@dataclass
class Shard:
    """One sub-network as a graph: it reads ``cols`` of the input and writes ``rows`` of the output."""

    graph: gs.Graph
    cols: np.ndarray
    rows: np.ndarray


@dataclass
class _Layer:
    """A layer of the chain, the per-feature nodes after it, with the (node id, input position) of their
    constants that hold one value per feature -> the axis holding them, and the tensor it leads to (what the
    next layer reads, or the graph's output)."""

    op: WeightedOp
    after: list[gs.Node]
    per_feature: dict[tuple[int, int], int]
    leads_to: gs.Variable


def _tail(op: WeightedOp, output: gs.Variable) -> Optional[_Layer]:
    """The per-feature nodes from the last layer to the graph's output (module rule), or None."""
    tensor, after, per_feature = op.node.outputs[0], [], {}
    while tensor is not output:
        node = tensor.outputs[0] if len(tensor.outputs) == 1 else None
        positions = "no one reader" if node is None else per_feature_constants(node, op.shape[0])
        if isinstance(positions, str) or any(t is not tensor and not isinstance(t, gs.Constant) for t in node.inputs):
            return None
        after.append(node)
        per_feature.update({(id(node), i): axis for i, axis in positions})
        tensor = node.outputs[0]
    return _Layer(op, after, per_feature, output)


def _between(op: WeightedOp, consumer: WeightedOp) -> list[gs.Node]:
    """The nodes from ``op``'s output forward to ``consumer``, in graph order."""
    found, stack = {}, [op.node.outputs[0]]
    while stack:
        for node in stack.pop().outputs:
            if node is not consumer.node and id(node) not in found:
                found[id(node)] = node
                stack.append(node.outputs[0])
    return [node for node in op.graph.nodes if id(node) in found]


def _check(op: WeightedOp) -> Optional[str]:
    if op.cast is not None:
        return f"{op.node_name}: its weight is stored behind a Cast"
    if op.node.op == "Gemm" and op.bias is not None and op.output_bias() is None:
        return f"{op.node_name}: its bias is not one value per output"
    return None


def _chain(graph: gs.Graph) -> Union[list[_Layer], str]:
    """The chain's layers from the input to the output (module rule), or why the graph is not one."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return "a chain to shard reads one graph input and writes one graph output"
    by_node = {id(op.node): op for op in find_weighted_ops(graph)[0]}
    readers = graph.inputs[0].outputs
    op = by_node.get(id(readers[0])) if len(readers) == 1 and readers[0].inputs[0] is graph.inputs[0] else None
    if op is None:
        return f"{graph.inputs[0].name} is not read by one MatMul/Gemm alone"
    layers: list[_Layer] = []
    while True:
        reason = _check(op)
        if reason:
            return reason
        last = _tail(op, graph.outputs[0])
        if last is not None:
            layers.append(last)
            break
        space = feature_space(op, by_node)
        if isinstance(space, str):
            return f"{op.node_name}'s outputs reach no single next layer: {space}"
        if len(space.consumers) != 1:
            return f"{op.node_name}'s outputs reach {len(space.consumers)} layers"
        op, previous = space.consumers[0], op
        layers.append(_Layer(previous, _between(previous, op),
                             {(id(node), i): axis for node, i, axis in space.constants}, op.node.inputs[0]))
    covered = {id(node) for layer in layers for node in [layer.op.node, *layer.after]}
    extra = [node for node in graph.nodes if id(node) not in covered]
    return f"the graph computes more than the chain: {extra[0].name} ({extra[0].op})" if extra else layers


def _groups(layers: list[_Layer], plans: Mapping[Site, BlockPlan]) -> Union[list[tuple[np.ndarray, list]], str]:
    """Per sub-network (module rule), in the order of the last layer's branches: the input columns its first
    branches read and, per layer, its branches."""
    chosen = []
    for layer in layers:
        plan = plans.get(layer.op.site)
        if not isinstance(plan, BlockPlan) or (plan.n_out, plan.n_in) != layer.op.shape:
            return f"{layer.op.node_name} has no block plan of its shape {layer.op.shape}"
        chosen.append(plan)
    joined = DisjointSet((i, b) for i, plan in enumerate(chosen) for b in range(len(plan.branches)))
    for i in range(1, len(chosen)):
        writer = np.full(chosen[i - 1].n_out, -1)
        for b, branch in enumerate(chosen[i - 1].branches):
            writer[branch.rows] = b
        for b, branch in enumerate(chosen[i].branches):
            read = writer[branch.cols]
            if (read < 0).any():
                return f"{layers[i].op.node_name} reads features {layers[i - 1].op.node_name} computes from no input"
            for source in np.unique(read):
                joined.merge((i, b), (i - 1, int(source)))
    last = len(chosen) - 1
    if len(chosen[last].constant_rows):
        return f"{layers[last].op.node_name} has outputs computed from no input (its plan's constant rows)"
    roots = list(dict.fromkeys(joined[(last, b)] for b in range(len(chosen[last].branches))))
    if len(roots) < 2:
        names = " -> ".join(layer.op.node_name for layer in layers)
        return f"the groups of {names} are not independent end to end: every output depends on one sub-network"
    groups = []
    for root in roots:
        branches = [[branch for b, branch in enumerate(plan.branches) if joined[(i, b)] == root]
                    for i, plan in enumerate(chosen)]
        groups.append((np.unique(np.concatenate([branch.cols for branch in branches[0]])), branches))
    return groups


class _Emitter:
    """One shard's graph, its tensors named as in the model (fresh names where one is taken)."""

    def __init__(self, model: gs.Graph):
        source, output = model.inputs[0], model.outputs[0]
        self.input = gs.Variable(source.name, source.dtype, source.shape)
        self.output, self.model_output = gs.Variable(output.name, output.dtype), output
        self.nodes: list[gs.Node] = []
        self.names = {source.name, output.name}
        self.model = model

    def fresh(self, name: str) -> str:
        candidate, n = name, 0
        while candidate in self.names:
            n += 1
            candidate = f"{name}_{n}"
        self.names.add(candidate)
        return candidate

    def constant(self, name: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.fresh(name), np.ascontiguousarray(values))

    def node(self, op: str, name: str, inputs: list, attrs: Optional[dict] = None, output: str = "") -> gs.Variable:
        result = self.output if output == self.model_output.name else gs.Variable(self.fresh(output or name))
        self.nodes.append(gs.Node(op, self.fresh(name), dict(attrs or {}), inputs, [result]))
        return result

    def graph(self) -> gs.Graph:
        return gs.Graph(self.nodes, [self.input], [self.output], name=self.model.name, opset=self.model.opset,
                        import_domains=self.model.import_domains, ir_version=self.model.ir_version)


def _emit(model: gs.Graph, layers: list[_Layer], plans: Mapping[Site, BlockPlan], cols: np.ndarray,
          branches: list) -> Shard:
    """The shard of one sub-network (module rule)."""
    emit = _Emitter(model)
    x = emit.node("Gather", f"{emit.input.name}_cols", [emit.input, emit.constant(f"{emit.input.name}_cols", cols)],
                  {"axis": -1})
    features = cols
    for layer, chosen in zip(layers, branches):
        op = layer.op
        rows = np.unique(np.concatenate([branch.rows for branch in chosen]))
        keep = plans[op.site].mask()[np.ix_(rows, features)]
        weight = np.where(keep, op.effective()[np.ix_(rows, features)], 0).astype(op.weight.dtype)
        bias = op.output_bias() if op.node.op == "Gemm" else None
        name = op.node.outputs[0].name
        y = emit.node("MatMul", op.node_name, [x, emit.constant(op.weight.name, weight.T)],
                      output=name if bias is None else "")
        if bias is not None:
            values = (bias.scale * stored_values(bias.tensor).reshape(-1)[rows]).astype(bias.tensor.dtype)
            y = emit.node("Add", f"{op.node_name}_bias", [y, emit.constant(bias.tensor.name, values)], output=name)
        tensors = {id(op.node.outputs[0]): y}
        for node in layer.after:
            inputs = []
            for i, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Constant):
                    axis = layer.per_feature.get((id(node), i))
                    values = stored_values(tensor)
                    inputs.append(emit.constant(tensor.name, values if axis is None else np.take(values, rows, axis)))
                else:
                    inputs.append(gs.Variable.empty() if tensor.is_empty() else tensors[id(tensor)])
            tensors[id(node.outputs[0])] = emit.node(node.op, node.name, inputs, node.attrs, node.outputs[0].name)
        x, features = tensors[id(layer.leads_to)], rows
    emit.output.shape = [*emit.input.shape[:-1], len(features)]  # a chain keeps the input's leading dims
    return Shard(emit.graph(), cols, features)


def shard_chain(graph: gs.Graph, plans: Mapping[Site, BlockPlan]) -> Union[list[Shard], str]:
    """The shards of the chain that ``graph`` is, under ``plans`` (module rule), or why there are none; the
    graph is left as it is."""
    layers = _chain(graph)
    if isinstance(layers, str):
        return layers
    groups = _groups(layers, plans)
    if isinstance(groups, str):
        return groups
    return [_emit(graph, layers, plans, cols, branches) for cols, branches in groups]
