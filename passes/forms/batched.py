"""The batched form: all blocks in one MatMul over a leading block axis."""

from __future__ import annotations

from ..builder import Builder
from ..plan import BlockPlan
from .blocks import BlockForm, enter_blocks, finish, leave_blocks, read_slots, stacked_weights


class Batched(BlockForm):
    """For ``y = op(x, W)`` with ``x`` of rank ``r = L + 1`` and the plan laid out as ``k`` blocks of
    ``b_in x b_out`` (``forms.blocks``)::

        x_s = x, or GatherElements(x, in_slots) when the layout is not in order
        x_b = Transpose(Reshape(x_s, [0]*L + [k, b_in]), perm=[L, 0..L-1, L+1])     # [k, d_1..d_L, b_in]
        y_b = MatMul(x_b, W_stacked[k, 1.., b_in, b_out])                            # one node, k blocks
        y_s = Reshape(Transpose(y_b, perm=[1..L, 0, L+1]), [0]*L + [k*b_out])  (+ beta * C over the slots)
        y   = y_s, or GatherElements(y_s, out_slots) when not in order

    Gemm's alpha is folded into the stacked weights. Reshape targets name every width (no -1, which cannot be
    inferred from a tensor of 0 rows), so the form runs at every batch size, 0 included. Applies when the
    input rank is known and at least 2 and the blocks pad to at most ``1 + max_padding`` times the plan's work.
    """

    name = "batched"
    chain_saves = (2, 1)  # a Transpose and a Reshape, one copy of the activations

    def emit(self, b: Builder, plan: BlockPlan) -> None:
        layout = self.layout(plan)
        lead = b.rank - 1
        ones = [1] * lead  # a [k * b] constant in block layout [k, d_1..d_L, b] is [k, 1.., b]
        x = b.reshape(read_slots(b, layout), [0] * lead + [layout.k, layout.b_in], "x_blocks")
        x = b.emit("Transpose", "x_block_major", [x], {"perm": [lead, *range(lead), lead + 1]})
        enter_blocks(b, layout, 2, (layout.k, *ones, layout.b_in))
        weights = b.shared_weight(
            (*layout.weights_key(b.op, self.name), lead), "W_blocks",
            lambda: stacked_weights(b.op, layout).reshape(layout.k, *[1] * (lead - 1), layout.b_in, layout.b_out))
        y = b.emit("MatMul", "y_blocks", [x, weights])
        y = b.emit("Transpose", "y_feature_major", [y], {"perm": [*range(1, lead + 1), 0, lead + 1]})
        y = b.reshape(y, [0] * lead + [layout.k * layout.b_out], "y_slots")
        leave_blocks(b, layout, 2, (layout.k, *ones, layout.b_out))
        finish(b, layout, y)
