"""The one graph form every driver works on."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnx_decomp.model_io import is_large
from passes.infra import PassManager
from passes.normalize import FoldConstantNodes, UniqueNodeNames


def normalized_graph(model: onnx.ModelProto) -> gs.Graph:
    """The model as a graph with inferred shapes (the rewrite needs ranks), Constant weights folded and
    unique node names."""
    if not is_large(model):
        model = onnx.shape_inference.infer_shapes(model)
    graph = gs.import_onnx(model)
    PassManager([FoldConstantNodes(), UniqueNodeNames()])(graph)
    return graph
