"""Feature spaces: the features a weighted op produces, followed through per-feature ops to the weighted ops
that read them.

A *feature space* is the output of a weighted op ``Q`` (the producer) and every tensor computed from it by
per-feature nodes, up to the weighted ops that read one of them as their input (the consumers). A node is
per-feature when feature ``i`` of its output depends on feature ``i`` of its inputs alone: an elementwise
activation (``ELEMENTWISE``), or ``Add``/``Sub``/``Mul``/``Div`` whose operands are tensors of the space and
constants that are a scalar or a ``[.., n]`` vector (so ``x * Erf(x / c)``, GELU as exporters write it, is
per-feature: both operands are in the space). Relabelling or removing features of the space is exact when it
is applied everywhere at once (the producer's weight rows and bias, the per-feature constants, every
consumer's weight columns). So a space is refused, with the reason, when a tensor in it is a graph output or is
read by any other node (a residual Add, LayerNorm, Reshape, a node in a subgraph, an op mixing it with values
from outside the space), or a constant does not broadcast per feature.

A *chain* is a producer whose space has exactly one consumer, of as many inputs as the producer has outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from .ops import WeightedOp

ELEMENTWISE = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish",
               "Softplus", "Softsign", "Erf", "Identity", "Dropout", "Cast"}
ARITHMETIC = {"Add", "Sub", "Mul", "Div"}


@dataclass
class FeatureSpace:
    producer: WeightedOp
    consumers: list[WeightedOp]
    constants: list[tuple[gs.Node, int]]  # (node, input index) of per-feature constants to reorder
    n: int


def _per_feature_constant(tensor: gs.Constant, n: int) -> Optional[bool]:
    """Whether a constant operand must be reordered (a ``[.., n]`` vector), must not (a scalar), or None
    when it does not broadcast per feature."""
    shape = tuple(tensor.shape)
    if int(np.prod(shape)) == 1:
        return False
    return True if shape[-1] == n and int(np.prod(shape)) == n else None


def per_feature_constants(node: gs.Node, n: int) -> Union[list[int], str]:
    """The input positions of a per-feature node's ``[.., n]`` constants, which follow any relabelling of the
    features; or why the node is not per-feature (module rule; its variable inputs are the caller's to check)."""
    if len(node.outputs) != 1 or node.op not in ELEMENTWISE | ARITHMETIC:
        return f"{node.name} ({node.op}) is not a per-feature node"
    positions = []
    for i, operand in enumerate(node.inputs):
        if isinstance(operand, gs.Constant):
            reorder = _per_feature_constant(operand, n)
            if reorder is None:
                return f"{node.name}: constant of shape {tuple(operand.shape)} does not broadcast per feature"
            if reorder:
                positions.append(i)
    return positions


def feature_space(producer: WeightedOp, ops: Mapping[int, WeightedOp]) -> Union[FeatureSpace, str]:
    """The space of the module docstring, or why it cannot be relabelled (``ops``: weighted ops by node id)."""
    graph, n = producer.graph, producer.shape[0]
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
            consumer = ops.get(id(node))
            if consumer is not None and node.inputs[0] is tensor and all(t is not tensor for t in node.inputs[1:]):
                space.consumers.append(consumer)
                continue
            if id(node) in joined:
                continue
            if any(not isinstance(t, gs.Constant) and id(t) not in region for t in node.inputs):
                waiting[id(node)] = node  # joins once its other variable operands are in the space too
                continue
            positions = per_feature_constants(node, n)
            if isinstance(positions, str):
                return positions
            joined.add(id(node))
            waiting.pop(id(node), None)
            space.constants.extend((node, i) for i in positions)
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
