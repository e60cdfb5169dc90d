"""The Conv rewrite: planned Convs of one group (block plans over whole channels, low-rank plans) replaced by the
form named for each (``forms.conv``), their channel permutations folded into neighbouring weights first.

Folding rule (ours; ``fold_permutation``'s for MatMul): a Conv with a block plan reads its input channels in
block order (its branches' channels, concatenated) and writes its output channels in block order (their rows).
The output order relabels the Conv's own channel space (``features``: its kernel rows and bias, the
per-channel constants and depthwise Convs on the way, every consumer's input channels), the input order the
space that holds its input (when a Conv produces it); each space is relabelled once, by the first planned Conv
that asks (graph order, its output first), and not where a weight in it is shared or stored behind a Cast.
The plans are relabelled with their spaces; what is still out of order the form permutes at run time. Exact
up to float rounding.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from .block_rewrite import BlockRewrite, Emission
from .features import FeatureSpace, feature_space
from .fold_permutation import Folding
from .forms.conv import CONV_FORMS, channel_blocks
from .infra import Pass, PassError, PassResult
from .ops import CONV, LINEAR, Layout, find_weighted_ops
from .plan import BlockPlan, Plan
from .site import Site

logger = logging.getLogger(__name__)


def _channel_spaces(graph: gs.Graph) -> tuple[dict[Site, FeatureSpace], dict[Site, Site]]:
    """Every Conv's channel space that can be relabelled, and the producer whose space each Conv reads."""
    ops = [op for op in find_weighted_ops(graph, LINEAR + CONV)[0] if op.groups == 1]
    by_node = {id(op.node): op for op in ops}
    spaces, reads = {}, {}
    for op in ops:
        space = feature_space(op, by_node) if op.layout is Layout.KERNEL else "not a Conv"
        if isinstance(space, str) or any(len(member.weight.outputs) > 1 or member.cast is not None
                                         for member in (op, *space.consumers)):
            continue
        spaces[op.site] = space
        reads.update({consumer.site: op.site for consumer in space.consumers})
    return spaces, reads


def conv_folding(graph: gs.Graph, plans: Mapping[Site, Plan]) -> Folding:
    """The relabellings of the module rule and the plans in the new channel order (reads the graph only)."""
    spaces, reads = _channel_spaces(graph)
    convs = {op.site: op for op in find_weighted_ops(graph, CONV)[0]}
    orders: dict[Site, np.ndarray] = {}
    for site in [site for site in convs if site in plans]:  # graph order
        blocks = channel_blocks(convs[site], plans[site]) if isinstance(plans[site], BlockPlan) else "low rank"
        if isinstance(blocks, str):
            continue
        for producer, order in ((site, np.concatenate([rows for rows, _ in blocks])),
                                (reads.get(site), np.concatenate([channels for _, channels in blocks]))):
            if producer in spaces and producer not in orders and not np.array_equal(order, np.arange(len(order))):
                orders[producer] = order
    folding = Folding(plans=dict(plans))
    for producer, order in orders.items():
        space = spaces[producer]
        folding.spaces.append((space, order))
        folding.rows[producer] = order
        folding.cols.update({consumer.site: order for consumer in space.consumers})
    for site, plan in plans.items():
        if isinstance(plan, BlockPlan) and site in convs:
            inputs = orders.get(reads.get(site))
            folding.plans[site] = plan.relabeled(orders.get(site), None if inputs is None
                                                 else convs[site].input_columns(inputs))
    return folding


class ConvRewrite(Pass):
    __doc__ = __doc__

    def __init__(self, plans: Mapping[Site, Plan], chosen: Mapping[Site, str]):
        self.plans, self.chosen = dict(plans), dict(chosen)

    def requires(self, graph: gs.Graph) -> None:
        unknown = sorted({name for name in self.chosen.values()} - set(CONV_FORMS))
        if set(self.plans) != set(self.chosen) or unknown:
            raise PassError(f"every planned Conv needs one of the forms {sorted(CONV_FORMS)}")

    def call(self, graph: gs.Graph) -> PassResult[dict[Site, Emission]]:
        folding = conv_folding(graph, self.plans)
        folding.apply(graph)
        for space, _ in folding.spaces:
            logger.debug("folded a permutation of %d channels between %s and %s", space.n,
                         space.producer.node.name, ", ".join(c.node.name for c in space.consumers))
        chosen = {site: CONV_FORMS[name] for site, name in self.chosen.items()}
        result = BlockRewrite(folding.plans, chosen=chosen, op_types=CONV)(graph)
        return PassResult(graph, bool(self.plans), result.artifact)
