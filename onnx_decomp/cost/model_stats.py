"""Size and work of a model: node count, parameter count, MatMul/Gemm FLOPs per inference.

FLOPs count ``2 * M * K * N`` for every MatMul/Gemm whose shapes ONNX shape inference can resolve once the
graph inputs have concrete shapes (``io.shapes.concrete_shapes``), and the same ``2 * MACs`` for the Einsum
and Conv nodes the block forms emit (any Einsum ``...k,...->`` contracting its first input's last axis; a
Conv's output size times its kernel's per-group size). Nodes inside If branches are all counted, so models
with control flow get an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx

from onnx_decomp.io.walk import iter_graphs, iter_tensors


@dataclass
class ModelStats:
    nodes: int
    params: int
    matmul_flops: int


COUNTED = ("MatMul", "Gemm", "Einsum", "Conv")


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, list]) -> int:
    """Multiply-accumulates of one MatMul, Gemm, Einsum or Conv node at ``shapes`` (0 when unresolved)."""
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not a or not out or None in a or None in out:
        return 0
    if node.op_type == "Conv":
        kernel = shapes.get(node.input[1])
        return int(np.prod(out)) * int(np.prod(kernel[1:])) if kernel else 0
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
    return int(np.prod(out)) * k


def model_stats(model: onnx.ModelProto, shapes: dict[str, list]) -> ModelStats:
    """Nodes and parameters of every (sub)graph; FLOPs of the MatMul/Gemm nodes at ``shapes``."""
    graphs = list(iter_graphs(model.graph))
    flops = sum(2 * node_macs(n, shapes) for g in graphs for n in g.node if n.op_type in COUNTED)
    nodes = sum(len(g.node) for g in graphs)
    params = sum(int(np.prod(t.dims)) for t in iter_tensors(model.graph))
    return ModelStats(nodes, params, flops)
