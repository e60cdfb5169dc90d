"""Normalisation passes that put any exporter's graph into the form the rewrites and annealing expect."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from .builder import NameTable
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


class FoldBatchNorm(Pass):
    """``Conv -> BatchNormalization`` (inference) becomes one Conv: with ``s = scale / sqrt(var + epsilon)``,
    output channel ``o`` of the kernel is scaled by ``s_o`` and the bias becomes ``(B - mean) * s + beta``
    (``B`` zero when the Conv has none). Folded only where the Conv's output is read by the BatchNormalization
    alone and is no graph output, the kernel and bias are constants read by the Conv alone, and the
    normalisation's parameters are constants; the kernel keeps its tensor name, and the Conv writes the
    BatchNormalization's output. Exact up to float rounding."""

    def call(self, graph: gs.Graph) -> PassResult:
        names, modified = NameTable(graph), False
        for subgraph in all_graphs(graph):
            outputs = {id(t) for t in subgraph.outputs}
            for norm in [node for node in subgraph.nodes if node.op == "BatchNormalization"]:
                conv = _folding_conv(norm, outputs)
                if conv is None:
                    continue
                weight, bias = conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else None
                gamma, beta, mean, var = (t.values.astype(np.float64) for t in norm.inputs[1:5])
                scale = gamma / np.sqrt(var + float(norm.attrs.get("epsilon", 1e-5)))
                shift = (0.0 if bias is None else bias.values.astype(np.float64)) - mean
                kernel = weight.values * scale.reshape(-1, *(1,) * (weight.values.ndim - 1))
                conv.inputs[1] = gs.Constant(weight.name, kernel.astype(weight.values.dtype))
                new_bias = (shift * scale + beta).astype(weight.values.dtype)
                if bias is None:
                    conv.inputs.append(gs.Constant(names.fresh(f"{conv.name}/B"), new_bias))
                else:
                    conv.inputs[2] = gs.Constant(bias.name, new_bias)
                output = norm.outputs[0]
                norm.inputs.clear()
                norm.outputs.clear()
                conv.outputs[0] = output
                subgraph.nodes.remove(norm)
                logger.debug("folded BatchNormalization %r into Conv %r", norm.name, conv.name)
                modified = True
        return PassResult(graph, modified)


def _folding_conv(norm: gs.Node, graph_outputs: set[int]) -> Optional[gs.Node]:
    """The Conv ``norm`` folds into (``FoldBatchNorm``), or None."""
    x = norm.inputs[0]
    conv = x.inputs[0] if len(x.inputs) == 1 else None
    if conv is None or conv.op != "Conv" or len(x.outputs) != 1 or id(x) in graph_outputs or len(norm.outputs) != 1:
        return None
    operands = conv.inputs[1:] + norm.inputs[1:5]
    if len(norm.inputs) < 5 or any(not isinstance(t, gs.Constant) for t in operands if not t.is_empty()):
        return None
    if any(len(t.outputs) != 1 for t in conv.inputs[1:]) or any(t.is_empty() for t in conv.inputs[1:]):
        return None
    return conv


class ZeroConvBias(Pass):
    """A Conv with a constant kernel and no bias gets a zero bias ``[C_out]`` of the kernel's type: refits move
    the mean of what a cut removes into it. Exact."""

    def call(self, graph: gs.Graph) -> PassResult:
        names, modified = NameTable(graph), False
        for subgraph in all_graphs(graph):
            for conv in subgraph.nodes:
                if conv.op == "Conv" and len(conv.inputs) == 2 and isinstance(conv.inputs[1], gs.Constant):
                    kernel = conv.inputs[1].values
                    conv.inputs.append(gs.Constant(names.fresh(f"{conv.name}/B"), np.zeros(kernel.shape[0], kernel.dtype)))
                    modified = True
        return PassResult(graph, modified)
