"""Chains of block forms stay in block layout: consecutive decomposed layers whose blocks match run as k
independent sub-networks, with no reshaping, transposing or gathering between them.

Rule (after ``BlockRewrite``): where a block form's output leaves block layout, passes through per-feature
nodes, and enters block layout again with the same ``k`` blocks of ``b`` features, the layout changes cancel:

    batched: MatMul(., W[k, 1.., ., b]) -> Transpose -> Reshape([0]*L + [k*b])
             -> f.. -> Reshape([0]*L + [k, b]) -> Transpose
    einsum:  Einsum(., W[k, ., b]) -> Reshape([0]*L + [k*b]) -> f.. -> Reshape([0]*L + [k, b])

become ``MatMul -> f..`` (or ``Einsum -> f..``), each ``f`` taking the block tensor directly, its ``[k*b]``
constants reshaped to the block layout (scalars stay). The per-feature nodes are those ``fold_permutation``
accepts; every tensor on the way has one reader and is not a graph output. Exact: the same elements meet
the same constants.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from .fold_permutation import per_feature_inputs
from .infra import Pass, PassResult
from .ops import all_graphs

logger = logging.getLogger(__name__)


def _only_reader(tensor: gs.Variable, outputs: set) -> Optional[gs.Node]:
    return tensor.outputs[0] if len(tensor.outputs) == 1 and id(tensor) not in outputs else None


def _const(tensor) -> Optional[np.ndarray]:
    return tensor.values if isinstance(tensor, gs.Constant) else None


def _reshape_target(node: Optional[gs.Node]) -> Optional[list[int]]:
    if node is None or node.op != "Reshape" or _const(node.inputs[1]) is None:
        return None
    return _const(node.inputs[1]).tolist()


def _block_source(merge: gs.Node, outputs: set):
    """For a Reshape that flattens block layout: (block tensor, its shape for constants, lead L, k, b, the
    nodes leaving the layout, whether re-entry needs a Transpose) or None."""
    target = _reshape_target(merge)
    lead = len(target or []) - 1
    if target is None or lead < 1 or target[:lead] != [0] * lead or not merge.inputs[0].inputs:
        return None
    producer = merge.inputs[0].inputs[0]
    if producer.op == "Transpose" and producer.attrs.get("perm") == [*range(1, lead + 1), 0, lead + 1]:
        matmul = producer.inputs[0].inputs[0] if producer.inputs[0].inputs else None
        w = _const(matmul.inputs[1]) if matmul is not None and matmul.op == "MatMul" else None
        if w is None or w.ndim != lead + 2 or _only_reader(matmul.outputs[0], outputs) is not producer:
            return None
        k, b = w.shape[0], w.shape[-1]
        source = matmul.outputs[0], (k, *[1] * lead, b), lead, k, b, [producer, merge], True
    else:
        w = _const(producer.inputs[1]) if producer.op == "Einsum" and len(producer.inputs) == 2 else None
        if w is None or w.ndim != 3 or producer.attrs.get("equation") != "...ki,kio->...ko":
            return None
        k, b = w.shape[0], w.shape[2]
        source = producer.outputs[0], (k, b), lead, k, b, [merge], False
    return source if target[lead] == k * b else None


def _cancel(merge: gs.Node, graph: gs.Graph, outputs: set) -> bool:
    """Cancel one round trip that starts at ``merge`` (module rule); False when the pattern does not hold."""
    source = _block_source(merge, outputs)
    if source is None or _only_reader(merge.inputs[0], outputs) is not merge:
        return False
    block, block_shape, lead, k, b, leaving, transposed = source
    chain, constants, tensor = [], [], merge.outputs[0]
    node = _only_reader(tensor, outputs)
    while node is not None and node.op != "Reshape":
        positions = per_feature_inputs(node, tensor, k * b)
        if isinstance(positions, str) or any(len(node.inputs[i].outputs) > 1 for i in positions):
            return False  # not per-feature, or a constant someone else reads too
        chain.append(node)
        constants += [node.inputs[i] for i in positions]
        tensor = node.outputs[0]
        node = _only_reader(tensor, outputs)
    if _reshape_target(node) != [0] * lead + [k, b]:
        return False
    entering = [node]
    if transposed:
        back = _only_reader(node.outputs[0], outputs)
        if back is None or back.op != "Transpose" or back.attrs.get("perm") != [lead, *range(lead), lead + 1]:
            return False
        entering.append(back)
    for constant in constants:
        constant.values = constant.values.reshape(block_shape)
    for node in chain:
        node.outputs[0].shape = None  # now in block layout
    first = chain[0] if chain else None
    if first is not None:
        first.inputs[first.inputs.index(merge.outputs[0])] = block
    end = chain[-1].outputs[0] if chain else block
    result = entering[-1].outputs[0]
    for reader in list(result.outputs):
        reader.inputs[[i for i, t in enumerate(reader.inputs) if t is result][0]] = end
    for dead in leaving + entering:
        dead.inputs.clear()
        dead.outputs.clear()
        graph.nodes.remove(dead)
    return True


class KeepBlockLayout(Pass):
    __doc__ = __doc__

    def call(self, graph: gs.Graph) -> PassResult:
        cancelled = 0
        for subgraph in all_graphs(graph):
            outputs = {id(t) for t in subgraph.outputs}
            for node in list(subgraph.nodes):
                if node.op == "Reshape" and node in subgraph.nodes and _cancel(node, subgraph, outputs):
                    cancelled += 1
        if cancelled:
            logger.debug("kept %d chain links in block layout", cancelled)
        return PassResult(graph, bool(cancelled))
