"""Size and work of a model: node count, parameter count, MatMul/Gemm FLOPs per inference.

FLOPs count ``2 * M * K * N`` for every MatMul/Gemm whose shapes ONNX shape inference can resolve once the
graph inputs have concrete shapes (see ``runtime.input_specs``). Nodes inside If branches are all
counted, so models with control flow get an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_decomp.model_io import iter_graphs, iter_tensors
from onnx_decomp.runtime import InputSpec

SMALL_TENSOR = 1024  # elements; larger initializers become typed inputs in the shape-inference skeleton


@dataclass
class ModelStats:
    nodes: int
    params: int
    matmul_flops: int


def _shape_skeleton(model: onnx.ModelProto, specs: Sequence[InputSpec]) -> onnx.ModelProto:
    """The model with concrete input shapes and its large initializers replaced by typed inputs
    (shape inference needs their shapes, not their values), shape-inferred."""
    graph = model.graph
    inputs = [helper.make_tensor_value_info(s.name, helper.np_dtype_to_tensor_dtype(s.dtype), s.shape)
              for s in specs]
    small = []
    for tensor in graph.initializer:
        if int(np.prod(tensor.dims)) <= SMALL_TENSOR:
            small.append(tensor)
        else:
            inputs.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    skeleton = helper.make_model(
        helper.make_graph(graph.node, graph.name, inputs, graph.output, small),
        opset_imports=model.opset_import, ir_version=model.ir_version,
    )
    skeleton.functions.extend(model.functions)
    return onnx.shape_inference.infer_shapes(skeleton)


def _shapes(graph: onnx.GraphProto) -> dict[str, list]:
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def concrete_shapes(model: onnx.ModelProto, specs: Sequence[InputSpec]) -> dict[str, list]:
    """Every tensor's inferred shape (None for a dim inference could not resolve) at ``specs`` shapes,
    over the graph and its subgraphs."""
    shapes: dict[str, list] = {}
    for graph in iter_graphs(_shape_skeleton(model, specs).graph):
        shapes.update(_shapes(graph))
    return shapes


def _flops(node: onnx.NodeProto, shapes: dict[str, list]) -> int:
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not a or not out or None in a or None in out:
        return 0
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
    return 2 * int(np.prod(out)) * k


def model_stats(model: onnx.ModelProto, shapes: dict[str, list]) -> ModelStats:
    """Nodes and parameters of every (sub)graph; FLOPs of the MatMul/Gemm nodes at ``shapes``
    (``concrete_shapes``)."""
    graphs = list(iter_graphs(model.graph))
    flops = sum(_flops(n, shapes) for g in graphs for n in g.node if n.op_type in ("MatMul", "Gemm"))
    nodes = sum(len(g.node) for g in graphs)
    params = sum(int(np.prod(t.dims)) for t in iter_tensors(model.graph))
    return ModelStats(nodes, params, flops)
