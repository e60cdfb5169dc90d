"""A candidate's node cut out of its model: the one-node model the cost model estimates and timing runs.

Rules:
- The node alone reads a graph input ``x`` of a concrete shape; the rewritten copy runs the candidate's
  plan in the feature order folding gives it (``Candidate.folded``), in one form. Timing runs keep the
  unfolded weight values: run time depends on shapes, not on values (ONNX Runtime has no sparse kernels).
- The cost model reads shapes only (``io.shapes.concrete_shapes`` infers them without the tensors over
  ``SMALL_TENSOR`` elements), so its models hold such tensors as placeholders (``io.graph.shape_only``): a
  layer's estimate costs no copy of its weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx

from onnx_decomp.decisions import Candidate
from onnx_decomp.io.graph import export_graph, shape_only, to_shapes_only
from onnx_decomp_passes import BlockRewrite, Form, one_node_graph
from onnx_decomp_passes.ops import stored_values

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def one_node_models(candidate: Candidate, form: Form, x_shape: Sequence[int], root: "gs.Graph",
                    shapes_only: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(dense, rewritten) one-node models of the module rules; ``shapes_only``: for the cost model."""
    op = candidate.op
    dtype = np.dtype(op.node.inputs[0].dtype or op.weight.dtype)
    values = shape_only if shapes_only else stored_values
    dense, rewritten = (one_node_graph(op, x_shape, dtype, root, values) for _ in range(2))
    plan = candidate.folded or candidate.plan
    BlockRewrite({op.site: plan}, chosen={op.site: form})(rewritten)
    if shapes_only:
        to_shapes_only(rewritten)
    return export_graph(dense), export_graph(rewritten)
