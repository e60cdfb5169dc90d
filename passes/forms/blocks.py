"""The block layout the one-node forms share: a plan's branches as ``k`` equal blocks, padded with zeros.

Rule: blocks are the plan's branches ordered by their first input column. Every block gets ``b_in`` input
slots and ``b_out`` output slots, the largest branch's sizes; slot ``s`` of block ``j`` is feature
``j * b + s``. A block's input slots read its columns in order, then (padding) its first column again, whose
weight there is zero; its output slots hold its rows in order, then rows that read nothing (constant rows:
weight zero, the bias alone), then unused slots. So padding never changes a result: a padded slot adds
``0 * x`` to real outputs, and padded outputs are dropped. The layout is *in order* on a side when the
slots are exactly the features ``0..n-1`` in order: nothing to gather there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..builder import Builder
from ..ops import WeightedOp
from ..plan import BlockPlan, Branch
from .base import Form

MAX_PADDING = 0.5  # default: padded blocks may do at most 50% more multiply-accumulates than the plan


@dataclass(frozen=True)
class BlockLayout:
    plan: BlockPlan
    blocks: tuple[Branch, ...]
    b_in: int
    b_out: int
    in_index: np.ndarray  # [k * b_in]: the input feature each input slot reads
    out_index: np.ndarray  # [n_out]: the output slot holding each output row

    @property
    def k(self) -> int:
        return len(self.blocks)

    @property
    def in_order(self) -> bool:
        return np.array_equal(self.in_index, np.arange(self.plan.n_in))

    @property
    def out_order(self) -> bool:
        return self.k * self.b_out == self.plan.n_out and np.array_equal(self.out_index, np.arange(self.plan.n_out))

    def weights_key(self, op: WeightedOp, form: str) -> tuple:
        """What determines a form's stacked weights besides the weight tensor (``Builder.shared_weight``)."""
        return (form, self.k, self.b_in, self.b_out, self.in_index.tobytes(), self.out_index.tobytes(),
                op.node.attrs.get("alpha", 1.0) if op.node.op == "Gemm" else 1.0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input vector, padding included."""
        return self.k * self.b_in * self.b_out


def block_layout(plan: BlockPlan, max_padding: float = MAX_PADDING) -> Union[BlockLayout, str]:
    """The layout of the module rule, or why there is none (fewer than two branches, too much padding)."""
    if len(plan.branches) < 2:
        return "one branch: nothing to batch"
    blocks = tuple(sorted(plan.branches, key=lambda b: (b.cols[0], b.rows[0])))
    k = len(blocks)
    b_in = max(len(b.cols) for b in blocks)
    b_out = max(len(b.rows) for b in blocks)
    spare = k * b_out - sum(len(b.rows) for b in blocks)
    b_out += max(0, math.ceil((len(plan.constant_rows) - spare) / k))
    if k * b_in * b_out > (1 + max_padding) * plan.macs:
        return (f"padding to {k} x {b_in}x{b_out} blocks does {k * b_in * b_out / plan.macs:.2f}x the plan's "
                f"work (limit {1 + max_padding:g}x)")
    in_index = np.concatenate([np.pad(b.cols, (0, b_in - len(b.cols)), constant_values=b.cols[0]) for b in blocks])
    out_index = np.empty(plan.n_out, dtype=np.int64)
    free = []
    for j, block in enumerate(blocks):
        out_index[block.rows] = j * b_out + np.arange(len(block.rows))
        free.extend(range(j * b_out + len(block.rows), (j + 1) * b_out))
    out_index[plan.constant_rows] = free[:len(plan.constant_rows)]
    return BlockLayout(plan, blocks, b_in, b_out, in_index, out_index)


def stacked_weights(op: WeightedOp, layout: BlockLayout) -> np.ndarray:
    """``[k, b_in, b_out]``: block ``j`` maps its input slots to its output slots, ``alpha`` folded in
    (Gemm), zero in padded slots."""
    w = op.matrix()
    stacked = np.zeros((layout.k, layout.b_in, layout.b_out), dtype=w.dtype)
    for j, block in enumerate(layout.blocks):
        stacked[j, :len(block.cols), :len(block.rows)] = w[np.ix_(block.rows, block.cols)].T
    alpha = op.node.attrs.get("alpha", 1.0) if op.node.op == "Gemm" else 1.0
    return stacked * np.asarray(alpha, dtype=w.dtype) if alpha != 1.0 else stacked


def slot_bias(op: WeightedOp, layout: BlockLayout) -> Optional[np.ndarray]:
    """``beta * C`` laid out over the output slots (zero in unused slots); C unchanged when it broadcasts
    over the outputs; None without a bias."""
    if op.bias is None:
        return None
    c = op.bias.values * np.asarray(op.node.attrs.get("beta", 1.0), dtype=op.bias.values.dtype)
    if not (c.ndim and c.shape[-1] == layout.plan.n_out):
        return c
    slots = np.zeros(c.shape[:-1] + (layout.k * layout.b_out,), dtype=c.dtype)
    slots[..., layout.out_index] = c
    return slots


def finish(b: Builder, layout: BlockLayout, y_slots) -> None:
    """Adds the bias to the slot outputs and puts the outputs in order into the node's output tensor."""
    bias = slot_bias(b.op, layout)
    if bias is not None:
        y_slots = b.emit("Add", "bias", [y_slots, b.constant("bias_slots", bias)])
    y = b.op.node.outputs[0]
    if layout.out_order:
        b.nodes[-1].outputs = [y]
    else:
        b.gather_features(y_slots, layout.out_index, "unpermute", output=y)


def read_slots(b: Builder, layout: BlockLayout):
    """The node's input with its features in slot order (the input itself when the layout is in order)."""
    x = b.op.node.inputs[0]
    return x if layout.in_order else b.gather_features(x, layout.in_index, "x_slots")


class BlockForm(Form):
    """A form that runs the plan's blocks as one node over the block layout (padding at most ``max_padding``
    of the plan's work). It applies when the input rank is known and at least 2 and the layout exists."""

    def __init__(self, max_padding: float = MAX_PADDING):
        self.max_padding = max_padding

    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        shape = op.node.inputs[0].shape
        if shape is None or len(shape) < 2:
            return "input rank unknown or 1"
        layout = block_layout(plan, self.max_padding)
        return layout if isinstance(layout, str) else None

    def layout(self, plan: BlockPlan) -> BlockLayout:
        return block_layout(plan, self.max_padding)
