"""A candidate's node cut out of its model: the one-node model the cost model estimates and timing runs.

Rule: the node alone reads a graph input ``x`` of a concrete shape; the rewritten copy runs the candidate's
plan in the feature order folding gives it (``Candidate.folded``), in one form. It keeps the unfolded weight
values: run time depends on shapes, not on values (ONNX Runtime has no sparse kernels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx

from onnx_decomp.decisions import Candidate
from onnx_decomp.io.graph import export_graph
from onnx_decomp_passes import BlockRewrite, Form, one_node_graph

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def one_node_models(candidate: Candidate, form: Form, x_shape: Sequence[int],
                    root: "gs.Graph") -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(dense, rewritten) one-node models of the module rule."""
    op = candidate.op
    dtype = np.dtype(op.node.inputs[0].dtype or op.weight.dtype)
    dense, rewritten = (one_node_graph(op, x_shape, dtype, root) for _ in range(2))
    plan = candidate.folded or candidate.plan
    BlockRewrite({op.site: plan}, chosen={op.site: form})(rewritten)
    return export_graph(dense), export_graph(rewritten)
