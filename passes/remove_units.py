"""Removing hidden units whole: a feature space keeps a subset of its features everywhere at once.

Rule: for every producer whose ``SlicePlan`` keeps rows ``K``, its feature space (``fold_permutation``: the
producer, the per-feature nodes after it, the weighted ops reading it) keeps the features ``K``: the producer's
weight rows and bias, every per-feature constant (on channels: BatchNormalization's, a depthwise Conv's kernel,
bias and group count) and every consumer's weight columns are sliced to ``K``, and the shapes of the tensors in
between forgotten (shape inference finds them again). Every consumer's plan must keep exactly the columns that
read ``K`` (``WeightedOp.input_columns``: a Conv's, each channel's window) and may keep fewer rows, as a
producer of its own space. Producers and consumers are MatMul/Gemm and Convs of one group; spaces joined by a
residual Add or a gate are one space whose producers must all keep ``K`` (``feature_space(coupled=True)``). Exact
against the model the plans were made on when the removed units contribute nothing there: their consumer
columns are zero (annealing refits the consumer on the kept units and moves the rest into its bias). Refused with a
``PassError`` where the space cannot be relabelled (a tensor in it is read by another node or is a graph
output, a weight is shared or stored behind a Cast) or the plans disagree.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from .features import FeatureSpace, feature_space
from .fold_permutation import Folding
from .infra import Pass, PassError, PassResult
from .ops import CONV, LINEAR, WeightedOp, find_weighted_ops
from .plan import SlicePlan
from .site import Site

logger = logging.getLogger(__name__)


def _forget_shapes(space: FeatureSpace) -> None:
    """The tensors from the producer to the consumers change width: their recorded shapes no longer hold."""
    stack = [producer.node.outputs[0] for producer in space.producers]
    consumers = {id(c.node) for c in space.consumers}
    while stack:
        tensor = stack.pop()
        tensor.shape = None
        stack += [node.outputs[0] for node in tensor.outputs if id(node) not in consumers]


def planned_ops(graph: gs.Graph, plans: Mapping[Site, object], kinds=LINEAR
                ) -> tuple[dict[int, WeightedOp], dict[Site, WeightedOp]]:
    """The graph's ungrouped weighted ops of ``kinds`` by node id and by site; a ``PassError`` where a plan names
    none of them."""
    ops = [op for op in find_weighted_ops(graph, kinds)[0] if op.groups == 1]
    by_node, by_site = {id(op.node): op for op in ops}, {op.site: op for op in ops}
    missing = sorted(set(plans) - set(by_site))
    if missing:
        raise PassError(f"plans name nodes that are not weighted ops: {[s.node for s in missing]}")
    return by_node, by_site


class RemoveUnits(Pass):
    __doc__ = __doc__

    def __init__(self, plans: Mapping[Site, SlicePlan]):
        self.plans = dict(plans)

    def call(self, graph: gs.Graph) -> PassResult[Folding]:
        by_node, by_site = planned_ops(graph, self.plans, LINEAR + CONV)
        removal = Folding()
        for site, plan in self.plans.items():
            if plan.rows is None or site in removal.rows:  # done: a coupled producer of a space removed before
                continue
            space = feature_space(by_site[site], by_node, coupled=True)
            if isinstance(space, str):
                raise PassError(f"{site.node}: cannot remove units: {space}")
            members = [*space.producers, *space.consumers]
            shared = [op.node.name for op in members if len(op.weight.outputs) > 1 or op.cast is not None]
            if shared:
                raise PassError(f"{site.node}: cannot remove units: the weight of {shared[0]} is shared or cast")
            for producer in space.coupled:
                rows = self.plans.get(producer.site, SlicePlan(*producer.shape)).rows
                if rows is None or not np.array_equal(rows, plan.rows):
                    raise PassError(f"{site.node}: {producer.node.name}, whose features join its own, does not drop "
                                    "the same units")
            for consumer in space.consumers:
                cols = self.plans.get(consumer.site, SlicePlan(*consumer.shape)).cols
                if cols is None or not np.array_equal(cols, consumer.input_columns(plan.rows)):
                    raise PassError(f"{site.node}: its consumer {consumer.node.name} does not drop the same units")
            removal.spaces.append((space, plan.rows))
            removal.rows.update({producer.site: plan.rows for producer in space.producers})
            removal.cols.update({consumer.site: plan.rows for consumer in space.consumers})
        removal.apply(graph)
        for space, kept in removal.spaces:
            _forget_shapes(space)
            logger.debug("removed %d of %d units between %s and %s", space.n - len(kept), space.n,
                         space.producer.node.name, ", ".join(c.node.name for c in space.consumers))
        return PassResult(graph, bool(removal.spaces), removal)
