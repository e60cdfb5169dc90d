"""The 1x1-Conv form: a MatMul/Gemm's blocks run as one grouped 1x1 Conv (``group = k``), positions as
spatial dims."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import Builder, index
from ..ops import WeightedOp
from ..plan import BlockPlan
from .blocks import BlockForm, finish, read_slots, stacked_weights

MAX_RANK = 4  # ONNX Runtime's CPU Conv takes up to 3 spatial dims


def _conv_or_empty(b: Builder, x, weights, groups: int, channels: int, spatial: int) -> gs.Variable:
    """``Conv(x, weights)`` with kernel 1; when ``x`` holds no element (ONNX Runtime's Conv refuses 0
    positions), the empty result of the same shape instead, expanded from ``x[:, :1]``."""
    def empty() -> gs.Variable:
        bounds = [b.constant(f"first_{name}", index([v])) for name, v in (("start", 0), ("end", 1), ("axis", 1))]
        first = b.emit("Slice", "x_first", [x, *bounds])
        return b.emit("Expand", "y_empty", [first, b.constant("y_shape", index([1, channels] + [1] * spatial))])

    def conv() -> gs.Variable:
        return b.emit("Conv", "y_conv", [x, weights], {"group": groups, "kernel_shape": [1] * spatial})

    no_element = b.emit("Equal", "x_empty", [b.emit("Size", "x_size", [x]), b.constant("zero", index(0))])
    return b.emit("If", "y_groups", [no_element], {"then_branch": _branch(b, "no_positions", empty),
                                                    "else_branch": _branch(b, "positions", conv)})


def _branch(b: Builder, suffix: str, emit) -> gs.Graph:
    """The nodes ``emit()`` appends, moved into a subgraph whose output is the tensor it returns (typed like
    the node's input)."""
    start = len(b.nodes)
    output = emit()
    nodes = b.nodes[start:]
    del b.nodes[start:]
    output.dtype = b.op.node.inputs[0].dtype
    return gs.Graph(nodes=nodes, outputs=[output], name=b.names.fresh(f"{b.prefix}/{suffix}"))


class Conv1x1(BlockForm):
    """For ``y = op(x, W)`` with ``x`` of rank ``r = L + 1`` (2 to 4) and the plan laid out as ``k`` blocks
    of ``b_in x b_out`` (``forms.blocks``)::

        x_c = Unsqueeze(Transpose(x_s, perm=[L, 0..L-1]), 0)     # [1, k*b_in, d_1..d_L]: positions as space
        y_c = If(Size(x_c) == 0,                                   # ONNX Runtime's Conv refuses 0 positions
                 then: Expand(x_c[:, :1], [1, k*b_out, 1..1]),     # the empty result, of the right shape
                 else: Conv(x_c, K[k*b_out, b_in, 1..1], group=k)) # one node, kernel 1 in every spatial dim
        y_s = Transpose(Squeeze(y_c, 0), perm=[1..L, 0])  (+ beta * C), then back in output order if needed

    Each group is one GEMM of ``[b_out, b_in] x [b_in, positions]`` (putting the batch in Conv's N axis
    instead runs one tiny GEMM per row and group, measured far slower). Needs opset 13 (Squeeze axes input).
    """

    name = "conv1x1"

    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        if (op.graph.opset or 0) < 13:
            return "1x1-Conv form needs opset 13"
        shape = op.node.inputs[0].shape
        if shape is not None and len(shape) > MAX_RANK:
            return f"1x1-Conv form takes inputs of rank <= {MAX_RANK}"
        return super().check(op, plan)

    def emit(self, b: Builder, plan: BlockPlan) -> None:
        layout = self.layout(plan)
        lead = b.rank - 1
        axis0 = b.constant("axis0", np.array([0], dtype=np.int64))
        x = b.emit("Transpose", "x_channels", [read_slots(b, layout)], {"perm": [lead, *range(lead)]})
        x = b.emit("Unsqueeze", "x_image", [x, axis0])

        def kernel() -> np.ndarray:  # [k * b_out, b_in, 1, ...]: group j's output channels read its inputs
            stacked = stacked_weights(b.op, layout).transpose(0, 2, 1)
            return stacked.reshape(layout.k * layout.b_out, layout.b_in, *[1] * lead)

        weights = b.shared_weight((*layout.weights_key(b.op, self.name), lead),
                                    "W_groups", kernel)
        y = _conv_or_empty(b, x, weights, layout.k, layout.k * layout.b_out, lead)
        y = b.emit("Squeeze", "y_channels", [y, axis0])
        finish(b, layout, b.emit("Transpose", "y_slots", [y], {"perm": [*range(1, lead + 1), 0]}))
