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
channels only, ``CHANNELWISE`` nodes (BatchNormalization, pools: their constants ``[n]``), a Resize by constant
scales that keep the channels, and depthwise Convs (one group per channel, ``[n, 1, k..]`` kernel and ``[n]``
bias; their ``group`` follows the channel count).
Relabelling or removing features of the space is exact when it is applied everywhere at once (the producer's
weight rows and bias, the per-feature constants, every consumer's weight columns). So a space is refused, with
the reason, when a tensor in it is a graph output or is read by any other node (a residual Add, a Concat,
LayerNorm, Reshape, a node in a subgraph, an op mixing it with values from outside the space, a consumer
reading the features on another axis or in groups), or a constant does not broadcast per feature. Asked for
``coupled`` spaces, a node mixing the features with another weighted op's (a residual Add of two Convs, a
squeeze-excitation gate ``x * HardSigmoid(Conv(..))``) joins that op's space to this one: one space with several
producers, whose features are relabelled or removed in all of them at once.

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
    coupled: list[WeightedOp] = field(default_factory=list)  # further producers whose features join these

    @property
    def producers(self) -> list[WeightedOp]:
        return [self.producer, *self.coupled]

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


def _resize(node: gs.Node, axis: int) -> Union[list, str]:
    """A Resize by constant ``scales`` that keep the batch and channel dims is per-channel (nothing to reorder)."""
    scales = node.inputs[2] if len(node.inputs) > 2 else None
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    if axis == 1 and isinstance(scales, gs.Constant) and (sizes is None or sizes.is_empty()) \
            and len(scales.values) >= 2 and np.all(scales.values[:2] == 1):
        return []
    return f"{node.name} (Resize) does not keep the channels by constant scales"


def per_feature_constants(node: gs.Node, n: int, axis: int = -1, rank: int = 0) -> Union[list[tuple[int, int]], str]:
    """The (input position, axis) of a per-feature node's constants that hold one value per feature, which
    follow any relabelling of the features; or why the node is not per-feature (module rule; ``axis`` and
    ``rank``: the features' axis and the activations' rank; its variable inputs are the caller's to check)."""
    if node.op == "Resize":
        return _resize(node, axis)
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


class _Walk:
    """The search behind ``feature_space``: tensors of the space are walked forward to their readers; with
    ``coupled``, an operand from outside is pulled in backward, through per-feature nodes, to the weighted op
    computing it, which becomes one more producer."""

    def __init__(self, producer: WeightedOp, ops: Mapping[int, WeightedOp], coupled: bool):
        self.ops, self.coupled, self.n, self.axis = ops, coupled, producer.shape[0], producer.feature_axis
        self.rank = len(producer.weight.shape) if self.axis == 1 else 0
        self.members = {id(node) for node in producer.graph.nodes}
        self.outputs = {id(t) for t in producer.graph.outputs}
        self.space = FeatureSpace(producer, [], [], self.n)
        self.region, self.joined = {id(producer.node.outputs[0])}, set()
        self.pending = [producer.node.outputs[0]]

    def _outside(self, node: gs.Node) -> list:
        return [t for t in node.inputs if not isinstance(t, gs.Constant) and not t.is_empty() and id(t) not in self.region]

    def _join(self, node: gs.Node) -> Optional[str]:
        """Take a per-feature node into the space (its output walked forward), or say why it is not one."""
        positions = per_feature_constants(node, self.n, self.axis, self.rank)
        if isinstance(positions, str):
            return positions
        self.joined.add(id(node))
        self.space.constants.extend((node, i, at) for i, at in positions)
        if node.op == "Conv":
            self.space.depthwise.append(node)
        self._enter(node.outputs[0])
        return None

    def _enter(self, tensor) -> None:
        self.region.add(id(tensor))
        self.pending.append(tensor)

    def _pull(self, tensor) -> bool:
        """Bring ``tensor`` in from where it is computed (class rule); False when it cannot be."""
        source = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        op = None if source is None else self.ops.get(id(source))
        if op is not None and op.feature_axis == self.axis and op.shape[0] == self.n and op.groups == 1:
            self.space.coupled.append(op)
            self._enter(tensor)
            return True
        if source is None or id(source) not in self.members or self._join(source) is not None:
            return False
        return all(self._pull(t) for t in self._outside(source))

    def run(self) -> Union[FeatureSpace, str]:
        waiting = {}
        while self.pending:
            tensor = self.pending.pop()
            if id(tensor) in self.outputs:
                return f"{tensor.name} is a graph output"
            for node in tensor.outputs:
                if id(node) not in self.members:
                    return f"{tensor.name} is read inside a subgraph"
                consumer = None if is_depthwise(node, self.n) else self.ops.get(id(node))
                if consumer is not None and node.inputs[0] is tensor and all(t is not tensor for t in node.inputs[1:]):
                    if consumer.feature_axis != self.axis or consumer.groups != 1:
                        return f"{node.name} reads the features on another axis or in groups"
                    self.space.consumers.append(consumer)
                    continue
                if id(node) in self.joined:
                    continue
                outside = self._outside(node)
                if outside and not (self.coupled and all(self._pull(t) for t in outside)):
                    waiting[id(node)] = node  # joins once its other variable operands are in the space too
                    continue
                waiting.pop(id(node), None)
                reason = self._join(node)
                if reason is not None:
                    return reason
        waiting = [node for node in waiting.values() if id(node) not in self.joined]
        if waiting:
            return f"{waiting[0].name} ({waiting[0].op}) mixes the features with values from outside them"
        return self.space


def feature_space(producer: WeightedOp, ops: Mapping[int, WeightedOp], coupled: bool = False) -> Union[FeatureSpace, str]:
    """The space of the module docstring, or why it cannot be relabelled (``ops``: weighted ops by node id);
    ``coupled``: spaces joined by a node reading two of them (a residual Add, a gate) are one space with several
    producers (``FeatureSpace.coupled``)."""
    return _Walk(producer, ops, coupled).run()


def find_chains(ops: list[WeightedOp]) -> list[tuple[WeightedOp, WeightedOp]]:
    """Pairs ``(producer, consumer)`` of the module rule, producers in the order of ``ops``."""
    by_node = {id(op.node): op for op in ops}
    chains = []
    for op in ops:
        space = feature_space(op, by_node)
        if not isinstance(space, str) and len(space.consumers) == 1 and space.consumers[0].shape[1] == op.shape[0]:
            chains.append((op, space.consumers[0]))
    return chains
