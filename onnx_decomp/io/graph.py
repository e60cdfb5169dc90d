"""ModelProto <-> onnx-graphsurgeon graph: the one graph form every driver hands to the back end."""

from __future__ import annotations

from typing import Optional

import onnx
import onnx_graphsurgeon as gs

from onnx_decomp.io.shapes import symbolic_types
from onnx_decomp_passes import FoldConstantNodes, PassManager, UniqueNodeNames, all_graphs

MODEL_FIELDS = ("doc_string", "domain", "model_version", "producer_name", "producer_version")


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """The model as a graph whose tensors carry their inferred types (the rewrite needs ranks; inferred on
    the weight-free skeleton, so at any model size), Constant weights folded and node names unique."""
    graph = gs.import_onnx(model)
    types = symbolic_types(model)
    for subgraph in all_graphs(graph):
        for tensor in subgraph.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor.name in types:
                dtype, shape = types[tensor.name]
                tensor.dtype = tensor.dtype if tensor.dtype is not None else dtype
                tensor.shape = tensor.shape if tensor.shape is not None else shape
    PassManager([FoldConstantNodes(), UniqueNodeNames()])(graph)
    return graph


def export_graph(graph: gs.Graph, like: Optional[onnx.ModelProto] = None) -> onnx.ModelProto:
    """The graph as a ModelProto, carrying ``like``'s model-level fields and metadata when given."""
    model = gs.export_onnx(graph)
    if like is not None:
        for name in MODEL_FIELDS:
            setattr(model, name, getattr(like, name))
        model.metadata_props.extend(like.metadata_props)
    return model
