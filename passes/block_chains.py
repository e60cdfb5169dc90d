"""Chains of block forms stay in block layout: consecutive decomposed layers whose blocks match run as k
independent sub-networks, with no reshaping, transposing or gathering between them.

Rule (after ``BlockRewrite``, from what each form recorded of its emission): where one site's output leaves
block layout (``Emission.exit``), passes through per-feature nodes only, and is exactly what another site
of the same form takes into block layout (``Emission.entry``) with the same ``k`` blocks of ``b`` features,
the two layout changes cancel: the per-feature nodes take the block tensor directly, their ``[k * b]``
constants reshaped to the block layout (``BlockBoundary.constant_shape``; scalars stay), and the nodes that
left and re-entered block layout are removed. The per-feature nodes are those ``fold_permutation`` accepts;
every tensor on the way has one reader and is not a graph output, and no other node reads a constant that is
reshaped. Exact: the same elements meet the same constants.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional

import onnx_graphsurgeon as gs

from .block_rewrite import Emission
from .builder import BlockBoundary
from .features import per_feature_constants
from .infra import Pass, PassResult
from .ops import all_graphs
from .site import Site

logger = logging.getLogger(__name__)


def _only_reader(tensor: gs.Variable, outputs: set) -> Optional[gs.Node]:
    return tensor.outputs[0] if len(tensor.outputs) == 1 and id(tensor) not in outputs else None


def _path(leaving: BlockBoundary, entering: Mapping[int, BlockBoundary], outputs: set):
    """The per-feature nodes from where ``leaving`` leaves block layout to an entry it meets, with the
    positions of their per-feature constants and that entry; None when the module rule does not hold."""
    chain, constants, tensor = [], [], leaving.flat
    while id(tensor) not in entering:
        node = _only_reader(tensor, outputs)
        if node is None:
            return None
        positions = per_feature_constants(node, leaving.k * leaving.b)
        others = [t for t in node.inputs if not isinstance(t, gs.Constant) and t is not tensor]
        if isinstance(positions, str) or others or any(len(node.inputs[i].outputs) > 1 for i, _ in positions):
            return None  # not per-feature, or a constant someone else reads too
        chain.append(node)
        constants += [node.inputs[i] for i, _ in positions]
        tensor = node.outputs[0]
    entry = entering[id(tensor)]
    if _only_reader(tensor, outputs) is not entry.nodes[0] or (entry.k, entry.b, entry.constant_shape) != \
            (leaving.k, leaving.b, leaving.constant_shape):
        return None
    return chain, constants, entry


def _cancel(leaving: BlockBoundary, entry: BlockBoundary, chain: list, constants: list, graph: gs.Graph) -> None:
    for constant in constants:
        constant.values = constant.values.reshape(leaving.constant_shape)
    for node in chain:
        node.outputs[0].shape = None  # now in block layout
    if chain:
        chain[0].inputs[chain[0].inputs.index(leaving.flat)] = leaving.blocks
    end = chain[-1].outputs[0] if chain else leaving.blocks
    for reader in list(entry.blocks.outputs):
        reader.inputs[[i for i, t in enumerate(reader.inputs) if t is entry.blocks][0]] = end
    for dead in leaving.nodes + entry.nodes:
        dead.inputs.clear()
        dead.outputs.clear()
        graph.nodes.remove(dead)


class KeepBlockLayout(Pass):
    __doc__ = __doc__

    def __init__(self, emitted: Mapping[Site, Emission]):
        self.emitted = emitted

    def call(self, graph: gs.Graph) -> PassResult:
        cancelled = 0
        for subgraph in all_graphs(graph):
            members = {id(node) for node in subgraph.nodes}
            outputs = {id(t) for t in subgraph.outputs}
            mine = [e for e in self.emitted.values() if e.nodes and id(e.nodes[0]) in members]
            for form in dict.fromkeys(e.form for e in mine):
                entering = {id(e.entry.flat): e.entry for e in mine if e.form == form and e.entry is not None}
                for leaving in [e.exit for e in mine if e.form == form and e.exit is not None]:
                    path = _path(leaving, entering, outputs)
                    if path is not None:
                        _cancel(leaving, path[2], path[0], path[1], subgraph)
                        cancelled += 1
        if cancelled:
            logger.debug("kept %d chain links in block layout", cancelled)
        return PassResult(graph, bool(cancelled))
