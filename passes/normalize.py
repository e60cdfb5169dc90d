"""Normalisation passes that put any exporter's graph into the form the block rewrite expects."""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from .infra import Pass, PassResult
from .ops import all_graphs

logger = logging.getLogger(__name__)


class FoldConstantNodes(Pass):
    """``Constant(value=T) -> t`` becomes the initializer ``t = T`` in the same (sub)graph.

    Constant nodes whose output is a graph output, or that use another attribute than ``value``
    (``value_float``, ``sparse_value``, ...), are left alone.
    """

    def call(self, graph: gs.Graph) -> PassResult:
        modified = False
        for subgraph in all_graphs(graph):
            outputs = {id(t) for t in subgraph.outputs}
            for node in list(subgraph.nodes):
                value = node.attrs.get("value")
                if node.op != "Constant" or not isinstance(value, gs.Constant):
                    continue
                tensor = node.outputs[0]
                if id(tensor) in outputs:
                    continue
                node.outputs.clear()
                tensor.to_constant(value.values)
                subgraph.nodes.remove(node)
                logger.debug("folded Constant node %r into initializer %r", node.name, tensor.name)
                modified = True
        return PassResult(graph, modified)


class UniqueNodeNames(Pass):
    """Every node gets a non-empty name unique across the model: ``<op>_<n>`` for unnamed nodes,
    ``<name>_<n>`` for repeats. Plans and reports refer to nodes by these names."""

    def call(self, graph: gs.Graph) -> PassResult:
        seen: set[str] = set()
        modified = False
        for subgraph in all_graphs(graph):
            for node in subgraph.nodes:
                base = node.name or node.op
                name, n = base, 0
                while not name or name in seen:
                    name, n = f"{base}_{n}", n + 1
                if name != node.name:
                    logger.debug("renamed node %r to %r", node.name, name)
                    node.name, modified = name, True
                seen.add(name)
        return PassResult(graph, modified)
