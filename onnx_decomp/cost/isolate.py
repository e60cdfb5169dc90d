"""A candidate's node cut out of its model: the one-node model the cost model estimates and timing runs.

Rules:
- The node alone reads a graph input ``x`` of a concrete shape; the rewritten copy runs the candidate's
  plan in the feature order folding gives it (``Candidate.folded``), in one form. Timing runs keep the
  unfolded weight values: run time depends on shapes, not on values (ONNX Runtime has no sparse kernels).
- The cost model reads shapes only (``io.shapes.concrete_shapes`` infers them without the tensors over
  ``SMALL_TENSOR`` elements), so its models hold such tensors as placeholders (``ShapeOnly``): zeros without
  memory where the rewrite reads them, an initializer without data where they are exported. A layer's
  estimate then costs no copy of its weight.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnx_decomp.decisions import Candidate
from onnx_decomp.io.graph import export_graph
from onnx_decomp.io.shapes import SMALL_TENSOR
from onnx_decomp_passes import BlockRewrite, Form, all_graphs, one_node_graph
from onnx_decomp_passes.ops import stored_values


class ShapeOnly(LazyValues):
    """A tensor's shape and type alone (module rule): read, broadcast zeros; exported, an initializer whose data
    is nowhere."""

    def __init__(self, name: str, shape: Sequence[int], dtype: np.dtype):
        tensor = onnx.TensorProto(name=name, dims=list(shape), data_type=helper.np_dtype_to_tensor_dtype(dtype),
                                  data_location=onnx.TensorProto.EXTERNAL)
        tensor.external_data.add(key="location", value="shape-only")
        super().__init__(tensor)

    def load(self) -> np.ndarray:
        return np.broadcast_to(np.zeros((), helper.tensor_dtype_to_np_dtype(self.tensor.data_type)), self.shape)


def _placeholder(tensor: gs.Constant):
    """``ShapeOnly`` for a tensor over ``SMALL_TENSOR`` elements, its values otherwise."""
    if int(np.prod(tensor.shape)) <= SMALL_TENSOR:
        return stored_values(tensor)
    return ShapeOnly(tensor.name, tensor.shape, np.dtype(tensor.dtype))


def one_node_models(candidate: Candidate, form: Form, x_shape: Sequence[int], root: gs.Graph,
                    shapes_only: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(dense, rewritten) one-node models of the module rules; ``shapes_only``: for the cost model."""
    op = candidate.op
    dtype = np.dtype(op.node.inputs[0].dtype or op.weight.dtype)
    values = _placeholder if shapes_only else stored_values
    dense, rewritten = (one_node_graph(op, x_shape, dtype, root, values) for _ in range(2))
    plan = candidate.folded or candidate.plan
    BlockRewrite({op.site: plan}, chosen={op.site: form})(rewritten)
    if shapes_only:
        for graph in all_graphs(rewritten):
            for tensor in graph.tensors().values():
                if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, LazyValues):
                    tensor._values = _placeholder(tensor)
    return export_graph(dense), export_graph(rewritten)
