"""The Einsum form: all blocks in one Einsum, no transposes in the graph."""

from __future__ import annotations

from typing import Optional

from ..builder import Builder
from ..ops import WeightedOp
from ..plan import BlockPlan
from .blocks import BlockForm, enter_blocks, finish, leave_blocks, read_slots, stacked_weights

MIN_EINSUM_OPSET = 12


class BlockEinsum(BlockForm):
    """For ``y = op(x, W)`` with the plan laid out as ``k`` blocks of ``b_in x b_out`` (``forms.blocks``)::

        x_b = Reshape(x_s, [0]*L + [k, b_in])                # x_s: x, or its features in slot order
        y_b = Einsum("...ki,kio->...ko", x_b, W_stacked)       # [d_1..d_L, k, b_out]
        y   = Reshape(y_b, [0]*L + [k*b_out]) (+ beta * C), then back in output order if needed

    As the batched form (``forms.batched``; no -1 in a Reshape, so 0 rows run too), with ONNX Runtime's Einsum
    arranging the operands. Needs opset 12.
    ``quantize_dynamic`` leaves Einsum in float.
    """

    name = "einsum"
    chain_saves = (1, 0)  # a Reshape, which aliases

    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        if (op.graph.opset or 0) < MIN_EINSUM_OPSET:
            return f"Einsum needs opset {MIN_EINSUM_OPSET}"
        return super().check(op, plan)

    def emit(self, b: Builder, plan: BlockPlan) -> None:
        layout = self.layout(plan)
        lead = b.rank - 1
        x = b.reshape(read_slots(b, layout), [0] * lead + [layout.k, layout.b_in], "x_blocks")
        enter_blocks(b, layout, 1, (layout.k, layout.b_in))
        weights = b.shared_weight(layout.weights_key(b.op, self.name),
                                    "W_blocks", lambda: stacked_weights(b.op, layout))
        y = b.emit("Einsum", "y_blocks", [x, weights], {"equation": "...ki,kio->...ko"})
        y = b.reshape(y, [0] * lead + [layout.k * layout.b_out], "y_slots")
        leave_blocks(b, layout, 1, (layout.k, layout.b_out))
        finish(b, layout, y)
