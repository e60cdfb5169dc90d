"""The transposed batched form: all blocks in one MatMul in feature-major layout, permutations as row
gathers."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..builder import Builder, index
from ..ops import WeightedOp
from ..plan import BlockPlan
from .blocks import BlockForm, stacked_weights

MIN_ALLOWZERO_OPSET = 14


class Transposed(BlockForm):
    """For ``y = op(x, W)`` with ``x`` of rank ``r = L + 1`` and the plan laid out as ``k`` blocks of
    ``b_in x b_out`` (``forms.blocks``)::

        x_f = Transpose(x, perm=[L, 0..L-1])                     # [n_in, d_1..d_L]: features as rows
        x_b = Reshape(Gather(x_f, in_slots, axis=0), [k, b_in, -1])  # the Gather only when not in order
        y_b = MatMul(W_stacked^T[k, b_out, b_in], x_b)            # one node, k blocks, weights on the left
        y_f = Gather(Reshape(y_b, [k*b_out] + [d_1..d_L]), out_slots, axis=0)   # only when not in order
        y   = Transpose(y_f, perm=[1..L, 0])  (+ beta * C)

    A permutation here moves whole rows of ``d_1 * .. * d_L`` values, where the row-layout forms gather
    single values (design.md section 6): the form for hidden permutations that cannot be folded at large
    batch. Inputs of rank above 2 take their leading dims from ``Shape(x)`` to unflatten, with ``allowzero``
    (opset 14) so that a dim of size 0 stays 0 rather than copying the input's. Applies when the input rank
    is known and at least 2 (above 2 from opset 14) and the blocks pad to at most ``1 + max_padding`` times
    the work.
    """

    name = "transposed"

    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        shape = op.node.inputs[0].shape
        if shape is not None and len(shape) > 2 and (op.graph.opset or 0) < MIN_ALLOWZERO_OPSET:
            return f"transposed form needs opset {MIN_ALLOWZERO_OPSET} for inputs of rank above 2"
        return super().check(op, plan)

    def emit(self, b: Builder, plan: BlockPlan) -> None:
        layout = self.layout(plan)
        op, lead = b.op, b.rank - 1
        x = b.emit("Transpose", "x_feature_major", [op.node.inputs[0]], {"perm": [lead, *range(lead)]})
        if not layout.in_order:
            x = b.emit("Gather", "x_slots", [x, b.constant("x_slots_idx", index(layout.in_index))], {"axis": 0})
        x = b.reshape(x, [layout.k, layout.b_in, -1], "x_blocks")
        weights = b.shared_weight(layout.weights_key(op, self.name), "W_blocks",
                                    lambda: np.ascontiguousarray(stacked_weights(op, layout).transpose(0, 2, 1)))
        y = b.emit("MatMul", "y_blocks", [weights, x])
        slots = layout.k * layout.b_out
        if lead == 1:
            y = b.reshape(y, [slots, -1], "y_slots")
        else:
            lead_dims = b.leading_shape(op.node.inputs[0], "lead_shape")
            shape = b.emit("Concat", "y_slots_shape", [b.constant("n_slots", index([slots])), lead_dims], {"axis": 0})
            y = b.emit("Reshape", "y_slots", [y, shape], {"allowzero": 1})
        if not layout.out_order:
            y = b.emit("Gather", "unpermute", [y, b.constant("unpermute_idx", index(layout.out_index))], {"axis": 0})
        y = b.emit("Transpose", "y", [y], {"perm": [*range(1, lead + 1), 0]})
        if op.bias is not None:
            beta = np.asarray(op.node.attrs.get("beta", 1.0), dtype=op.bias.values.dtype)
            y = b.emit("Add", "bias", [y, b.constant("bias", op.bias.values * beta)])
        b.nodes[-1].outputs = [op.node.outputs[0]]
