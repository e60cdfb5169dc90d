"""Removing attention heads whole: a block's query, key and value projections keep the rows of the kept
heads (and their biases), its output projection their columns, and every shape constant holding the head
count (``head_region``: a Reshape's literal at the heads' axis, ``H`` or a multiple such as ``H * dh``) takes
the kept count; shapes computed in the graph from the tensors follow on their own.

Plans: ``HeadsPlan``s, rows on the projections and columns on o, each block with the same heads kept on every
member. A block is the output projection and the projections whose results reach it. Exact against the model
the plans were made on when the removed heads contribute nothing there: their o columns are zero (annealing
refits o on the kept heads). Refused with a ``PassError`` where ``head_region`` refuses the block, or where
the plans of a block disagree or a projection reaches no planned output projection.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from .builder import NameTable
from .features import FeatureSpace
from .fold_permutation import Folding
from .head_region import HeadRegion, head_region, reached_ops
from .infra import Pass, PassError, PassResult
from .plan import HeadsPlan
from .remove_units import planned_ops
from .site import Site

logger = logging.getLogger(__name__)


def _space(op, consumer, rows: np.ndarray) -> tuple[FeatureSpace, np.ndarray]:
    """A projection's rows as a feature space of its own read by o: its bias Add's constant follows the rows."""
    bias = op.output_bias()
    constants = [] if bias is None or bias.node is op.node else [(bias.node, bias.node.inputs.index(bias.tensor), -1)]
    return FeatureSpace(op, [consumer], constants, op.shape[0]), rows


class RemoveHeads(Pass):
    __doc__ = __doc__

    def __init__(self, plans: Mapping[Site, HeadsPlan], shapes: Mapping[str, list]):
        self.plans, self.shapes = dict(plans), shapes

    def _regions(self, graph: gs.Graph) -> list[HeadRegion]:
        by_node, by_site = planned_ops(graph, self.plans)
        blocks: dict[Site, list] = {site: [] for site, plan in self.plans.items() if plan.cols is not None}
        for site, plan in self.plans.items():
            if plan.rows is None:
                continue
            targets = [op.site for op in reached_ops(by_site[site], by_node) if op.site in blocks]
            if len(targets) != 1:
                raise PassError(f"{site.node}: its heads reach {len(targets)} planned output projections, not one")
            blocks[targets[0]].append(by_site[site])
        regions = []
        for site, producers in blocks.items():
            plan = self.plans[site]
            if any(not np.array_equal(self.plans[op.site].kept_heads(), plan.kept_heads()) or
                   self.plans[op.site].heads != plan.heads for op in producers):
                raise PassError(f"{site.node}: its projections keep other heads")
            region = head_region(producers, by_site[site], plan.heads, self.shapes)
            if isinstance(region, str):
                raise PassError(f"{site.node}: cannot remove heads: {region}")
            regions.append(region)
        return regions

    def call(self, graph: gs.Graph) -> PassResult[list[HeadRegion]]:
        regions = self._regions(graph)
        folding = Folding()
        for region in regions:
            consumer = region.consumer
            folding.cols[consumer.site] = self.plans[consumer.site].cols
            for op in region.producers:
                folding.rows[op.site] = self.plans[op.site].rows
                folding.spaces.append(_space(op, consumer, self.plans[op.site].rows))
        folding.apply(graph)
        names = NameTable(graph)
        for region in regions:
            kept = len(self.plans[region.consumer.site].kept_heads())
            for node, index in region.rewrites:
                shape = np.array(node.inputs[1].values, dtype=np.int64)
                shape[index] = shape[index] // region.heads * kept
                node.inputs[1] = gs.Constant(names.fresh(f"{node.name}/shape"), shape)
            for tensor in region.tensors:
                tensor.shape = None
            logger.debug("removed %d of %d heads before %s (%d shape constants rewritten)", region.heads - kept,
                         region.heads, region.consumer.node.name, len(region.rewrites))
        return PassResult(graph, bool(regions), regions)
