"""Permutation folding: reorder the features between two weighted layers inside their constants, so that
decomposed layers read and write contiguous blocks and no permutation runs at inference time.

Relabelling the features of a feature space (``features``: a producer, the per-feature nodes after it, its
consumers) by a permutation ``p`` (new feature ``i`` is old feature ``p[i]``) is exact when it is applied
everywhere at once: the producer's weight rows and bias, the per-feature constants on their feature axis (and a
depthwise Conv's group count), and every consumer's weight columns (a Conv's: each channel's window). A space the features module refuses is left as it is, and so is one where a weight to
reorder is shared with another node (folding would copy it) or stored behind a Cast. A space with several
producers (``feature_space(coupled=True)``) relabels the rows and bias of each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from .builder import Builder, NameTable
from .forms.blocks import block_layout
from .infra import Pass, PassResult
from .features import FeatureSpace, feature_space
from .ops import WeightedOp, find_weighted_ops
from .plan import BlockPlan
from .site import Site

logger = logging.getLogger(__name__)


def _contiguous_sides(plan: BlockPlan) -> tuple[bool, bool]:
    """(inputs, outputs): whether the blocks read contiguous ranges, and write their rows in block order."""
    layout = block_layout(plan, max_padding=float("inf"))
    if isinstance(layout, str):
        return False, False
    reads = all(b.cols[-1] - b.cols[0] + 1 == len(b.cols) for b in layout.blocks)
    order = np.concatenate([b.rows for b in layout.blocks] + [plan.constant_rows])
    return reads, bool(np.array_equal(order, np.arange(plan.n_out)))


def _wanted_orders(space: FeatureSpace, plans: Mapping[Site, BlockPlan]) -> list[np.ndarray]:
    """Candidate relabellings: the producer's rows in its block order, then each consumer's blocks' columns."""
    wanted = []
    plan = plans.get(space.producer.site)
    if plan is not None and len(plan.branches) > 1:
        layout = block_layout(plan, max_padding=float("inf"))
        wanted.append(np.concatenate([b.rows for b in layout.blocks] + [plan.constant_rows]))
    for consumer in space.consumers:
        plan = plans.get(consumer.site)
        if plan is not None and len(plan.branches) > 1:
            reads = np.concatenate([b.cols for b in plan.branches] + [plan.unused_cols])
            if len(reads) == plan.n_in:  # disjoint reads: a permutation
                wanted.append(reads)
    return wanted


@dataclass
class Folding:
    """The relabellings chosen for a graph and its plans: ``rows[site]`` / ``cols[site]`` reorder a weight,
    ``plans`` are the plans in the new feature order."""

    spaces: list[tuple[FeatureSpace, np.ndarray]] = field(default_factory=list)
    plans: dict[Site, BlockPlan] = field(default_factory=dict)
    rows: dict[Site, np.ndarray] = field(default_factory=dict)
    cols: dict[Site, np.ndarray] = field(default_factory=dict)
    refused: dict[Site, str] = field(default_factory=dict)  # producer -> why its space was left alone
    links: dict[Site, Site] = field(default_factory=dict)  # consumer -> producer, spaces with one (planned) reader

    def restricted(self, sites: set[Site]) -> "Folding":
        """Only the relabellings of spaces that ``sites`` take part in, and the plans of ``sites``: a space
        whose members all stay dense is left as it is."""
        spaces = [(space, order) for space, order in self.spaces
                  if {space.producer.site, *(c.site for c in space.consumers)} & sites]
        members = {op.site for space, _ in spaces for op in (space.producer, *space.consumers)}
        return Folding(spaces, {site: self.plans[site] for site in sites if site in self.plans},
                       {s: o for s, o in self.rows.items() if s in members},
                       {s: o for s, o in self.cols.items() if s in members}, dict(self.refused),
                       {c: p for c, p in self.links.items() if {c, p} <= sites})

    def apply(self, graph: gs.Graph) -> None:
        """Write the relabelled weights, biases and per-feature constants into ``graph`` (new tensors, named
        afresh; the old ones are left to whoever else reads them)."""
        names = NameTable(graph)

        def builder(op: WeightedOp) -> Builder:
            return Builder(op, {}, names)

        ops = {}
        for space, order in self.spaces:
            ops.update({op.site: op for op in (*space.producers, *space.consumers)})
            for node, i, axis in space.constants:
                values = np.take(node.inputs[i].values, order, axis=axis)
                node.inputs[i] = builder(space.producer).constant(f"{node.name}_folded{i}", values)
            for node in space.depthwise:
                node.attrs["group"] = len(order)
            for producer in space.producers:
                bias = producer.bias
                if bias is not None and bias.values.ndim and bias.values.shape[-1] == space.n:
                    producer.node.inputs[2] = builder(producer).constant("C_folded", bias.values[..., order])
        for site, op in ops.items():
            matrix = op.matrix()
            if site in self.rows:
                matrix = matrix[self.rows[site]]
            if site in self.cols:
                matrix = matrix[:, op.input_columns(self.cols[site])]
            op.node.inputs[1] = builder(op).constant("W_folded", op.tensor_from(matrix))


def plan_folding(graph: gs.Graph, plans: Mapping[Site, BlockPlan]) -> Folding:
    """Choose a relabelling per feature space (module rule), producers in graph order: the candidate (from
    ``_wanted_orders``) that makes the most planned sides contiguous, the producer's first on ties. Reads
    the graph only; ``Folding.apply`` writes it."""
    folding = Folding(plans=dict(plans))
    ops, _ = find_weighted_ops(graph)
    by_node = {id(op.node): op for op in ops}
    for producer in ops:  # find_weighted_ops lists each graph's nodes in order: producers before consumers
        space = feature_space(producer, by_node)
        if isinstance(space, str):
            folding.refused[producer.site] = space
            continue
        members = [producer, *space.consumers]
        shared = [op.node.name for op in members if len(op.weight.outputs) > 1]
        cast = [op.node.name for op in members if op.cast is not None]
        if shared or cast:
            folding.refused[producer.site] = (f"weight of {shared[0]} is shared" if shared else
                                                   f"weight of {cast[0]} is stored behind a Cast")
            continue
        if len(space.consumers) == 1 and {producer.site, space.consumers[0].site} <= set(plans):
            folding.links[space.consumers[0].site] = producer.site
        best, best_score = None, 0
        for order in _wanted_orders(space, folding.plans):
            score = _score(space, order, folding.plans)
            if score > best_score:
                best, best_score = order, score
        if best is None or np.array_equal(best, np.arange(space.n)):
            continue
        _relabel(folding, space, best)
    return folding


def _relabelled(space: FeatureSpace, order: np.ndarray, plans: Mapping[Site, BlockPlan]) -> dict[Site, BlockPlan]:
    """The plans of the space's members after relabelling its features by ``order``."""
    out = {}
    if space.producer.site in plans:
        out[space.producer.site] = plans[space.producer.site].relabeled(rows=order)
    for consumer in space.consumers:
        if consumer.site in plans:
            out[consumer.site] = plans[consumer.site].relabeled(cols=order)
    return out


def _score(space: FeatureSpace, order: np.ndarray, plans: Mapping[Site, BlockPlan]) -> int:
    """How many planned sides of the space are contiguous after relabelling by ``order``."""
    new = _relabelled(space, order, plans)
    score = 0
    if space.producer.site in new:
        score += _contiguous_sides(new[space.producer.site])[1]
    for consumer in space.consumers:
        if consumer.site in new:
            score += _contiguous_sides(new[consumer.site])[0]
    return score


def _relabel(folding: Folding, space: FeatureSpace, order: np.ndarray) -> None:
    folding.plans.update(_relabelled(space, order, folding.plans))
    folding.rows[space.producer.site] = order
    for consumer in space.consumers:
        folding.cols[consumer.site] = order
    folding.spaces.append((space, order))


class FoldPermutation(Pass):
    __doc__ = __doc__ + """
    The pass applies a ``Folding`` decided beforehand (``plan_folding``, usually restricted to the sites that
    are rewritten) and returns it as its artifact."""

    def __init__(self, folding: Folding):
        self.folding = folding

    def call(self, graph: gs.Graph) -> PassResult[Folding]:
        self.folding.apply(graph)
        for space, _ in self.folding.spaces:
            logger.debug("folded a permutation of %d features between %s and %s", space.n,
                         space.producer.node.name, ", ".join(c.node.name for c in space.consumers))
        return PassResult(graph, bool(self.folding.spaces), self.folding)
