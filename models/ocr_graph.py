"""Graph facts of the OCR models (``ocr``): a fixed input size, and where the multiply-accumulates are
(convolutions by kind, MatMul; at one image, ``cost.model_stats.counted_shapes``).

Conv kinds: ``pointwise`` (1 x 1, one group), ``depthwise`` (one group per input channel), ``full`` (k x k,
k > 1, one group), ``grouped`` (any other group count). ``activation Add`` counts Adds of two computed
tensors (residual and FPN merges: they couple the channels of their inputs); ``HardSwish`` counts the
``x * Clip(x + 3, 0, 6) / 6`` chains the exporter wrote for it.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_decomp.cost.model_stats import counted_shapes, node_macs
from onnx_decomp.io.shapes import input_specs

CONV_KINDS = ("pointwise", "depthwise", "full", "grouped")


def with_input_size(model: onnx.ModelProto, size: tuple[int, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose image input is [N, 3, *size] (N stays symbolic); inferred shapes dropped."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    dims = result.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    for dim, value in zip(dims[2:], size):
        dim.Clear()
        dim.dim_value = value
    del result.graph.value_info[:]
    return result


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name``, ``default`` when it has none."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def conv_kind(node: onnx.NodeProto, weight_shape) -> str:
    """The kind (module docstring) of a Conv node with weight [C_out, C_in / group, kh, kw]."""
    if attribute(node, "group", 1) == 1:
        return "pointwise" if tuple(weight_shape[2:]) == (1, 1) else "full"
    return "depthwise" if weight_shape[1] == 1 else "grouped"


def mac_split(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per image at the model's fixed input size: Conv by kind, ConvTranspose,
    MatMul/Gemm."""
    counted = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    shapes = counted_shapes(model, input_specs(model))
    macs = dict.fromkeys((*CONV_KINDS, "ConvTranspose", "MatMul"), 0)
    for node in counted:
        if node.op_type == "Conv":
            macs[conv_kind(node, shapes[node.input[1]])] += node_macs(node, shapes)
        elif node.op_type == "ConvTranspose":
            macs["ConvTranspose"] += int(np.prod(shapes[node.input[0]])) * int(np.prod(shapes[node.input[1]][1:]))
        else:
            macs["MatMul"] += node_macs(node, shapes)
    return macs


def _constants(graph: onnx.GraphProto) -> Mapping[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and any(a.name == "value" for a in node.attribute):
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def facts(model: onnx.ModelProto) -> dict[str, object]:
    """Opset, where the weights are, op counts, Conv kinds and output channels (and how many have all-zero
    weights), BatchNormalization after Conv or not, HardSwish chains, Adds of two computed tensors, Concats,
    the input's dims."""
    graph = model.graph
    constants = _constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    convs = Counter(conv_kind(n, constants[n.input[1]].shape) for n in graph.node if n.op_type == "Conv")
    bn = [n for n in graph.node if n.op_type == "BatchNormalization"]
    adds = [n for n in graph.node if n.op_type == "Add" and not any(i in constants for i in n.input)]
    hardswish = 0
    for node in graph.node:
        source = producer.get(node.input[0]) if node.op_type == "Clip" else None
        if source is not None and source.op_type == "Add" and any(
                i in constants and np.allclose(constants[i], 3) for i in source.input):
            hardswish += 1
    dims = [d.dim_value or d.dim_param or "?" for d in graph.input[0].type.tensor_type.shape.dim]
    return {
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "Constant nodes": sum(n.op_type == "Constant" for n in graph.node),
        "initializers": len(graph.initializer),
        "parameters": int(sum(v.size for v in constants.values())),
        "ops": dict(Counter(n.op_type for n in graph.node if n.op_type != "Constant").most_common()),
        "Conv kinds": dict(convs),
        "Conv output channels all zero": sum(int(np.sum(~constants[n.input[1]].reshape(
            constants[n.input[1]].shape[0], -1).any(1))) for n in graph.node if n.op_type == "Conv"),
        "Conv output channels": sum(constants[n.input[1]].shape[0] for n in graph.node if n.op_type == "Conv"),
        "BatchNormalization after Conv": sum(producer.get(n.input[0]) is not None and
                                             producer[n.input[0]].op_type == "Conv" for n in bn),
        "BatchNormalization elsewhere": sum(producer.get(n.input[0]) is None or
                                            producer[n.input[0]].op_type != "Conv" for n in bn),
        "HardSwish": hardswish,
        "activation Add": len(adds),
        "Concat": sum(n.op_type == "Concat" for n in graph.node),
        "input": f"{graph.input[0].name} {dims}",
    }
