"""Feature spaces: the features a weighted op produces, followed through per-feature ops to the weighted ops
that read them.

A *feature space* is the output of a weighted op ``Q`` (the producer) and every tensor computed from it by
per-feature nodes, up to the weighted ops that read one of them as their input (the consumers). Features lie on
the producer's feature axis: the last for MatMul/Gemm, the channels (axis 1) for a Conv. A node is per-feature
when feature ``i`` of its output depends on feature ``i`` of its inputs alone: an elementwise activation
(``ELEMENTWISE``; Clip's bounds are scalars), ``Add``/``Sub``/``Mul``/``Div`` whose operands are tensors of the
space and constants that are a scalar or hold one value per feature on the feature axis as they broadcast
(``[.., n]`` on the last axis; ``[n, 1, 1]`` or ``[1, n, 1, 1]`` on the channels of ``[N, n, H, W]``; so
``x * Erf(x / c)``, GELU as exporters write it, is per-feature: both operands are in the space), and, on
channels only, ``CHANNELWISE`` nodes (BatchNormalization, pools: their constants ``[n]``) and depthwise Convs
(one group per channel, ``[n, 1, k..]`` kernel and ``[n]`` bias; their ``group`` follows the channel count).
Relabelling or removing features of the space is exact when it is applied everywhere at once (the producer's
weight rows and bias, the per-feature constants, every consumer's weight columns). So a space is refused, with
the reason, when a tensor in it is a graph output or is read by any other node (a residual Add, a Concat,
LayerNorm, Reshape, a node in a subgraph, an op mixing it with values from outside the space, a consumer
reading the features on another axis or in groups), or a constant does not broadcast per feature.

A *chain* is a producer whose space has exactly one consumer, of as many inputs as the producer has outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from .ops import WeightedOp

ELEMENTWISE = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish",
               "Softplus", "Softsign", "Erf", "Identity", "Dropout", "Cast", "Clip"}
ARITHMETIC = {"Add", "Sub", "Mul", "Div"}
CHANNELWISE = {"BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}


@dataclass
class FeatureSpace:
    producer: WeightedOp
    consumers: list[WeightedOp]
    constants: list[tuple[gs.Node, int, int]]  # (node, input index, axis holding the features) to reorder
    n: int
    depthwise: list[gs.Node] = field(default_factory=list)  # Convs whose group count is the feature count

    @property
    def axis(self) -> int:
        """The activations' feature axis: -1, or 1 (channels)."""
        return self.producer.feature_axis


def _feature_axis(shape: tuple, n: int, axis: int, rank: int) -> Optional[int]:
    """The axis of a constant of ``shape`` that holds ``n`` features when it broadcasts against activations of
    ``rank`` with features on ``axis``; -1 for a scalar; None when it does not broadcast per feature."""
    if int(np.prod(shape)) == 1:
        return -1
    position = len(shape) - 1 if axis == -1 else len(shape) - rank + axis
    return position if position >= 0 and shape[position] == n and int(np.prod(shape)) == n else None


def is_depthwise(node: gs.Node, n: int) -> bool:
    """A Conv with one group per channel of ``n`` and one output per group, its kernel constant."""
    weight = node.inputs[1] if node.op == "Conv" and len(node.inputs) > 1 else None
    return isinstance(weight, gs.Constant) and int(node.attrs.get("group", 1)) == n == weight.shape[0] \
        and weight.shape[1] == 1


def per_feature_constants(node: gs.Node, n: int, axis: int = -1, rank: int = 0) -> Union[list[tuple[int, int]], str]:
    """The (input position, axis) of a per-feature node's constants that hold one value per feature, which
    follow any relabelling of the features; or why the node is not per-feature (module rule; ``axis`` and
    ``rank``: the features' axis and the activations' rank; its variable inputs are the caller's to check)."""
    channelwise = node.op in CHANNELWISE or is_depthwise(node, n)
    if len(node.outputs) != 1 or not (channelwise or node.op in ELEMENTWISE | ARITHMETIC):
        return f"{node.name} ({node.op}) is not a per-feature node"
    if channelwise and axis != 1:
        return f"{node.name} ({node.op}) works on channels (axis 1), the features are on the last axis"
    positions = []
    for i, operand in enumerate(node.inputs):
        if not isinstance(operand, gs.Constant):
            continue
        found = 0 if channelwise and operand.shape[0] == n else \
            None if channelwise else _feature_axis(tuple(operand.shape), n, axis, rank)
        if found is None:
            return f"{node.name}: constant of shape {tuple(operand.shape)} does not broadcast per feature"
        if found >= 0:
            positions.append((i, found))
    return positions


def feature_space(producer: WeightedOp, ops: Mapping[int, WeightedOp]) -> Union[FeatureSpace, str]:
    """The space of the module docstring, or why it cannot be relabelled (``ops``: weighted ops by node id)."""
    graph, n, axis = producer.graph, producer.shape[0], producer.feature_axis
    rank = len(producer.weight.shape) if axis == 1 else 0
    members = {id(node) for node in graph.nodes}
    outputs = {id(t) for t in graph.outputs}
    space = FeatureSpace(producer, [], [], n)
    region, joined, waiting = {id(producer.node.outputs[0])}, set(), {}
    pending = [producer.node.outputs[0]]
    while pending:
        tensor = pending.pop()
        if id(tensor) in outputs:
            return f"{tensor.name} is a graph output"
        for node in tensor.outputs:
            if id(node) not in members:
                return f"{tensor.name} is read inside a subgraph"
            consumer = None if is_depthwise(node, n) else ops.get(id(node))
            if consumer is not None and node.inputs[0] is tensor and all(t is not tensor for t in node.inputs[1:]):
                if consumer.feature_axis != axis or consumer.groups != 1:
                    return f"{node.name} reads the features on another axis or in groups"
                space.consumers.append(consumer)
                continue
            if id(node) in joined:
                continue
            if any(not isinstance(t, gs.Constant) and not t.is_empty() and id(t) not in region for t in node.inputs):
                waiting[id(node)] = node  # joins once its other variable operands are in the space too
                continue
            positions = per_feature_constants(node, n, axis, rank)
            if isinstance(positions, str):
                return positions
            joined.add(id(node))
            waiting.pop(id(node), None)
            space.constants.extend((node, i, at) for i, at in positions)
            if node.op == "Conv":
                space.depthwise.append(node)
            region.add(id(node.outputs[0]))
            pending.append(node.outputs[0])
    if waiting:
        node = next(iter(waiting.values()))
        return f"{node.name} ({node.op}) mixes the features with values from outside them"
    return space


def find_chains(ops: list[WeightedOp]) -> list[tuple[WeightedOp, WeightedOp]]:
    """Pairs ``(producer, consumer)`` of the module rule, producers in the order of ``ops``."""
    by_node = {id(op.node): op for op in ops}
    chains = []
    for op in ops:
        space = feature_space(op, by_node)
        if not isinstance(space, str) and len(space.consumers) == 1 and space.consumers[0].shape[1] == op.shape[0]:
            chains.append((op, space.consumers[0]))
    return chains
