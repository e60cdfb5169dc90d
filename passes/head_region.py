"""Where the heads of an attention block sit between its projections and its output projection, and which
shape constants hold their count.

A block: projections (query, key, value: weighted ops whose results hold ``heads`` heads of ``width / heads``
features, head after head on the last axis) and the output projection o that reads them back. Its region is
every tensor computed from the projections' results (after their bias Add) up to o's input, not through
``Shape``/``Size`` (their outputs are values of shapes, which follow the tensors they read). Each region
tensor carries the heads on one axis (``Heads``: the axis and the elements per head step inside it), followed
node by node in graph order:
- elementwise ops keep it, and so do ``Softmax``/``LogSoftmax`` over another axis; ``Transpose`` moves it;
- broadcasting ops (``Add``, ``Mul``, ``Where``, ...) and ``MatMul`` (heads on a batch axis) keep it, aligned
  from the right; an operand from outside the region must not vary along it (size 1 or absent), and region
  operands must agree;
- ``Reshape`` finds it in its output where the heads' elements fit in one axis. The shape's entry there must
  follow the kept count: ``-1``, ``0`` copying the same axis, or a dim that ``Shape`` reads from a region
  tensor where it is the heads' axis follow on their own; a literal in a constant shape is rewritten
  (``HeadRegion.rewrites``); a literal in a shape computed in the graph is refused, and so is an entry that
  carries the heads' axis anywhere else;
- o must read a tensor whose last axis holds the heads as the projections wrote them.
Anything else reading a region tensor (another op, a graph output, a subgraph) refuses the block, with the
reason, and so does a weight shared with another node or stored behind a Cast, or a shape not inferred.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx_graphsurgeon as gs

from .features import ELEMENTWISE
from .ops import WeightedOp

UNARY = ELEMENTWISE | {"Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Not", "IsNaN", "IsInf"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "LessOrEqual",
             "GreaterOrEqual", "And", "Or", "Xor"}
SHAPE_OPS = {"Shape", "Size"}


@dataclass(frozen=True)
class Heads:
    axis: int  # counted from the front
    inner: int  # elements per step of the head index inside the axis


@dataclass
class HeadRegion:
    """The block's producers and consumer, and each ``(Reshape, entry)`` of a constant shape holding the
    heads (its value is a multiple of the head count and scales with it)."""

    producers: list[WeightedOp]
    consumer: WeightedOp
    heads: int
    tensors: list[gs.Tensor] = field(default_factory=list)  # every region tensor, the projections' outputs too
    rewrites: list[tuple[gs.Node, int]] = field(default_factory=list)


class _Refused(Exception):
    pass


def result(op: WeightedOp) -> gs.Variable:
    """A projection's result: its bias Add's output for a MatMul with a bias."""
    bias = op.output_bias()
    return bias.node.outputs[0] if bias is not None and bias.node is not op.node else op.node.outputs[0]


def _entries(tensor: gs.Tensor, shapes: Mapping[str, list]) -> Optional[list]:
    """The values of a shape tensor: ``("const", v)`` or ``("dim", tensor, axis)`` (read by ``Shape``) each,
    through Concat, Gather, Slice, Unsqueeze, Squeeze, Cast and Identity; None where another op computes it."""
    if isinstance(tensor, gs.Constant):
        return [("const", int(v)) for v in np.ravel(tensor.values)]
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if node is None:
        return None
    if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return _entries(node.attrs["value"], shapes)
    if node.op == "Shape":
        rank = len(shapes.get(node.inputs[0].name) or ())
        dims = [("dim", node.inputs[0], axis) for axis in range(rank)]
        return dims[node.attrs.get("start", 0):node.attrs.get("end", rank)] if rank else None
    if node.op == "Concat":
        parts = [_entries(part, shapes) for part in node.inputs]
        return None if any(part is None for part in parts) else [e for part in parts for e in part]
    data = _entries(node.inputs[0], shapes) if node.inputs else None
    if data is None or node.op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return data
    if not all(isinstance(t, gs.Constant) for t in node.inputs[1:]):
        return None
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0:
        return [data[int(i)] for i in np.ravel(node.inputs[1].values)]
    if node.op == "Slice" and len(node.inputs) >= 3 and all(t.values.size == 1 for t in node.inputs[1:]):
        start, end, *rest = (int(t.values.reshape(-1)[0]) for t in node.inputs[1:])
        return data[start:end:rest[1] if len(rest) > 1 else 1] if not rest or rest[0] in (0, -1) else None
    return None


class _Follower:
    """Follows the heads through the region, node by node (module rules)."""

    def __init__(self, graph: gs.Graph, heads: int, shapes: Mapping[str, list]):
        self.graph, self.heads, self.shapes = graph, heads, shapes
        self.located: dict[int, Heads] = {}
        self.rewrites: list[tuple[gs.Node, int]] = []

    def shape(self, tensor: gs.Tensor) -> list[int]:
        shape = list(tensor.shape) if isinstance(tensor, gs.Constant) else self.shapes.get(tensor.name)
        if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape):
            raise _Refused(f"the shape of {tensor.name} is not known")
        return [int(d) for d in shape]

    def follow(self, node: gs.Node) -> Heads:
        inputs = [t for t in node.inputs if not t.is_empty()]
        here = [t for t in inputs if id(t) in self.located]
        if any(output.outputs for output in node.outputs[1:]):
            raise _Refused(f"{node.name} ({node.op}): its second output is read")
        if node.op in UNARY:
            return self.located[id(inputs[0])]
        if node.op in ("Softmax", "LogSoftmax"):
            return self._softmax(node, self.located[id(inputs[0])])
        if node.op == "Transpose":
            heads = self.located[id(inputs[0])]
            perm = node.attrs.get("perm") or list(reversed(range(len(self.shape(inputs[0])))))
            return Heads(list(perm).index(heads.axis), heads.inner)
        if node.op in BROADCAST or node.op == "MatMul":
            return self._aligned(node, inputs, batch_only=node.op == "MatMul")
        if node.op == "Reshape" and here == [inputs[0]]:
            return self._reshape(node, self.located[id(inputs[0])])
        raise _Refused(f"{node.name} ({node.op}) reads the heads")

    def _softmax(self, node: gs.Node, heads: Heads) -> Heads:
        rank = len(self.shape(node.inputs[0]))
        axis = node.attrs.get("axis", -1 if self.graph.opset >= 13 else 1) % rank
        if heads.axis == axis or (self.graph.opset < 13 and heads.axis > axis):
            raise _Refused(f"{node.name} ({node.op}) normalises across the heads")
        return heads

    def _aligned(self, node: gs.Node, inputs: Sequence[gs.Tensor], batch_only: bool) -> Heads:
        rank = len(self.shape(node.outputs[0]))
        if batch_only and any(len(self.shape(t)) < 2 for t in inputs):
            raise _Refused(f"{node.name} ({node.op}) has a 1-D operand")
        found = set()
        for tensor in inputs:
            heads, own = self.located.get(id(tensor)), len(self.shape(tensor))
            if heads is not None:
                if batch_only and heads.axis >= own - 2:
                    raise _Refused(f"{node.name} ({node.op}) multiplies along the heads")
                found.add(Heads(heads.axis + rank - own, heads.inner))
        if len(found) != 1:
            raise _Refused(f"{node.name} ({node.op}): its operands hold the heads on different axes")
        (heads,) = found
        for tensor in inputs:
            position = heads.axis - rank + len(self.shape(tensor))
            if id(tensor) not in self.located and position >= 0 and self.shape(tensor)[position] != 1:
                raise _Refused(f"{node.name} ({node.op}): {tensor.name} varies along the heads")
        return heads

    def _reshape(self, node: gs.Node, heads: Heads) -> Heads:
        before, after = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        stride = heads.inner * int(np.prod(before[heads.axis + 1:]))
        suffix, found = 1, None
        for axis in reversed(range(len(after))):
            if suffix <= stride < suffix * after[axis]:
                found = axis
                break
            suffix *= after[axis]
        if found is None or stride % suffix or (suffix * after[found]) % (stride * self.heads):
            raise _Refused(f"{node.name} (Reshape) splits the heads across axes")
        new = Heads(found, stride // suffix)
        entries = _entries(node.inputs[1], self.shapes)
        name = f"{node.name} (Reshape)"
        if entries is None or len(entries) != len(after):
            raise _Refused(f"{name}: its shape is computed by ops the rewrite cannot read")
        for index, (kind, value, *axis) in enumerate(entries):
            follows = self.located.get(id(value), Heads(-1, 0)).axis == axis[0] if kind == "dim" else \
                value == 0 and heads.axis == index
            if index != found and follows:
                raise _Refused(f"{name}: entry {index} carries the heads' dim to another axis")
            if index != found or follows or (kind == "const" and value == -1):
                continue
            if kind == "dim" or value == 0:
                raise _Refused(f"{name}: its heads' entry copies a dim that keeps its size")
            if not isinstance(node.inputs[1], gs.Constant):
                raise _Refused(f"{name}: the head count sits in a shape computed in the graph ({value} at entry "
                               f"{index})")
            self.rewrites.append((node, index))
        return new


def reached_ops(op: WeightedOp, by_node: Mapping[int, WeightedOp]) -> list[WeightedOp]:
    """The weighted ops that ``op``'s result reaches through other nodes (not through Shape/Size)."""
    reached, stack, seen = {}, [op.node.outputs[0]], set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.outputs:
            if id(node) in by_node:
                reached[id(node)] = by_node[id(node)]
            elif node.op not in SHAPE_OPS:
                stack.extend(node.outputs)
    return list(reached.values())


def head_region(producers: Sequence[WeightedOp], consumer: WeightedOp, heads: int,
                shapes: Mapping[str, list]) -> Union[HeadRegion, str]:
    """The region of the module rules, or why the block's heads cannot be removed."""
    try:
        return _region(producers, consumer, heads, shapes)
    except _Refused as refused:
        return str(refused)


def _region(producers: Sequence[WeightedOp], consumer: WeightedOp, heads: int,
            shapes: Mapping[str, list]) -> HeadRegion:
    graph, width = consumer.graph, consumer.shape[1]
    for op in (*producers, consumer):
        wide = op.shape[1] if op is consumer else op.shape[0]
        if len(op.weight.outputs) > 1 or op.cast is not None or op.graph is not graph or wide != width:
            raise _Refused(f"{op.node.name}: its weight is shared, cast or not {width} wide")
    if heads < 2 or width % heads:
        raise _Refused(f"{width} features do not split into {heads} heads")
    follower = _Follower(graph, heads, shapes)
    region = HeadRegion(list(producers), consumer, heads)
    for op in producers:
        start = result(op)
        shape = follower.shape(start)
        follower.located[id(start)] = Heads(len(shape) - 1, width // heads)
        region.tensors += [op.node.outputs[0]] if start is not op.node.outputs[0] else []
    nodes = _collect(graph, [result(op) for op in producers], consumer, region)
    for node in graph.nodes:
        if id(node) in nodes:
            follower.located[id(node.outputs[0])] = follower.follow(node)
    end = follower.located[id(consumer.node.inputs[0])]
    if end != Heads(len(follower.shape(consumer.node.inputs[0])) - 1, width // heads):
        raise _Refused(f"{consumer.node.name} does not read the heads as the projections wrote them")
    region.rewrites = follower.rewrites
    return region


def _collect(graph: gs.Graph, starts: list[gs.Variable], consumer: WeightedOp, region: HeadRegion) -> set[int]:
    """The region's nodes (module rules); refuses a region that leaves the graph or misses o."""
    members, outputs = {id(node) for node in graph.nodes}, {id(t) for t in graph.outputs}
    nodes, stack, seen, reached = set(), list(starts), set(), False
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        region.tensors.append(tensor)
        if id(tensor) in outputs:
            raise _Refused(f"{tensor.name} holds the heads and is a graph output")
        for node in tensor.outputs:
            if node is consumer.node:
                if node.inputs[0] is not tensor:
                    raise _Refused(f"{node.name} reads the heads as its weight")
                reached = True
            elif id(node) not in members:
                raise _Refused(f"{tensor.name} is read inside a subgraph")
            elif node.op not in SHAPE_OPS:
                nodes.add(id(node))
                stack.extend(node.outputs)
    if not reached:
        raise _Refused(f"the projections do not reach {consumer.node.name}")
    return nodes
