"""Conv forms: a Conv of one group whose plan is low rank, or block-diagonal over whole channels, as cheaper
Convs (``CONV_FORMS``; ``conv_rewrite`` folds their channel permutations into neighbouring weights).

A block plan of a Conv speaks of its matrix view ``W [C_out, C_in * window]``: a branch must read whole
channels (all columns of each channel's window, ``WeightedOp.input_columns``), and no row may read nothing.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from ..builder import Builder, index
from ..ops import Layout, WeightedOp
from ..plan import BlockPlan, LowRankPlan, Plan
from .base import Form
from .lowrank import factors

Blocks = list[tuple[np.ndarray, np.ndarray]]  # per branch: (output channels, input channels)


def channel_blocks(op: WeightedOp, plan: BlockPlan) -> Union[Blocks, str]:
    """(output channels, input channels) of every branch, or why the plan is not over whole channels."""
    if len(plan.constant_rows):
        return "some output channels read nothing"
    blocks = []
    for branch in plan.branches:
        channels = np.unique(branch.cols // op.window)
        if not np.array_equal(op.input_columns(channels), branch.cols):
            return "a branch reads part of a channel's window"
        blocks.append((branch.rows, channels))
    return blocks


def _conv_problem(op: WeightedOp) -> Optional[str]:
    if op.layout is not Layout.KERNEL or op.groups != 1:
        return "not a Conv of one group"
    return "the kernel is stored behind a Cast" if op.cast is not None else None


def _select(b: Builder, x, channels: np.ndarray, n: int, suffix: str):
    """Channels ``channels`` of ``x`` (axis 1), in that order: ``x`` itself, a Slice, or a Gather."""
    if np.array_equal(channels, np.arange(n)):
        return x
    if np.array_equal(channels, np.arange(channels[0], channels[0] + len(channels))):
        bounds = [b.constant(f"{suffix}_{name}", index([v])) for name, v in
                  (("start", channels[0]), ("end", channels[-1] + 1), ("axis", 1))]
        return b.emit("Slice", suffix, [x, *bounds])
    return b.emit("Gather", suffix, [x, b.constant(f"{suffix}_idx", index(channels))], {"axis": 1})


def _write(b: Builder, parts: list, rows: np.ndarray) -> None:
    """Concatenate ``parts`` (channels ``rows`` in that order) and permute them back into the node's output."""
    y = b.op.node.outputs[0]
    ordered = np.array_equal(rows, np.arange(len(rows)))
    whole = parts[0] if len(parts) == 1 else b.emit("Concat", "concat", parts, {"axis": 1},
                                                    output=y if ordered else None)
    if not ordered:
        b.emit("Gather", "unpermute", [whole, b.constant("unpermute_idx", index(np.argsort(rows)))], {"axis": 1},
               output=y)


def _conv(b: Builder, x, kernel: np.ndarray, bias: Optional[np.ndarray], suffix: str, attrs: dict, output=None):
    inputs = [x, b.constant(f"{suffix}_W", kernel.astype(b.op.weight.dtype))]
    if bias is not None:
        inputs.append(b.constant(f"{suffix}_B", bias.astype(b.op.weight.dtype)))
    return b.emit("Conv", suffix, inputs, attrs, output)


def _bias(op: WeightedOp) -> Optional[np.ndarray]:
    return None if op.bias is None else op.bias.values.reshape(-1)


class ConvGrouped(Form):
    """For a Conv whose plan has k branches of equal output and equal input channel counts, each reading whole
    channels ``(rows_b, channels_b)``::

        x' = Gather(x, channels_1 .. channels_k, axis=1)          # omitted when already in that order
        y' = Conv(x', [W[rows_b, channels_b] stacked], B[rows], group=k)
        y  = Gather(y', inverse of rows_1 .. rows_k, axis=1)       # omitted when already in order

    Exact: the grouped Conv computes every block and nothing else."""

    name = "conv_grouped"

    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        blocks = _conv_problem(op) or channel_blocks(op, plan)
        if isinstance(blocks, str):
            return blocks
        if len({len(rows) for rows, _ in blocks}) > 1 or len({len(channels) for _, channels in blocks}) > 1:
            return "blocks of unequal channel counts"
        return None

    def emit(self, b: Builder, plan: BlockPlan) -> None:
        op = b.op
        blocks, matrix, bias = channel_blocks(op, plan), op.matrix(), _bias(op)
        rows = np.concatenate([r for r, _ in blocks])
        channels = np.concatenate([c for _, c in blocks])
        kernel = np.concatenate([op.tensor_from(matrix[np.ix_(r, op.input_columns(c))]) for r, c in blocks])
        x = _select(b, op.node.inputs[0], channels, plan.n_in // op.window, "x_groups")
        attrs = {**op.node.attrs, "group": len(blocks)}
        out = None if not np.array_equal(rows, np.arange(len(rows))) else op.node.outputs[0]
        y = _conv(b, x, kernel, None if bias is None else bias[rows], "conv", attrs, out)
        if out is None:
            _write(b, [y], rows)


class ConvBranches(Form):
    """For a Conv whose plan's branches read whole channels ``(rows_b, channels_b)``::

        y_b = Conv(select(x, channels_b), W[rows_b, channels_b], B[rows_b])   # select: Slice or Gather, axis 1
        y   = Gather(Concat(y_1, .., y_k, axis=1), inverse of rows_1 .. rows_k, axis=1)

    Exact; the Gather is omitted when the rows are in order, the Concat when there is one branch."""

    name = "conv_branches"

    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        blocks = _conv_problem(op) or channel_blocks(op, plan)
        return blocks if isinstance(blocks, str) else None

    def emit(self, b: Builder, plan: BlockPlan) -> None:
        op = b.op
        blocks, matrix, bias = channel_blocks(op, plan), op.matrix(), _bias(op)
        parts = []
        for number, (rows, channels) in enumerate(blocks):
            with b.for_block(number):
                x = _select(b, op.node.inputs[0], channels, plan.n_in // op.window, f"x{number}")
                kernel = op.tensor_from(matrix[np.ix_(rows, op.input_columns(channels))])
                parts.append(_conv(b, x, kernel, None if bias is None else bias[rows], f"conv{number}",
                                   dict(op.node.attrs)))
        _write(b, parts, np.concatenate([rows for rows, _ in blocks]))


class ConvLowRank(Form):
    """For a Conv whose matrix view ``W [C_out, C_in * window]`` has rank at most r (``LowRankPlan``) and
    ``W = up @ down`` its truncated SVD (``lowrank.factors``)::

        t = Conv(x, down as [r, C_in, k..])                      # the node's kernel, strides, pads, dilations
        y = Conv(t, up as [C_out, r, 1..], B)                    # 1 x 1

    Exact for a kernel of rank r up to float rounding."""

    name = "conv_lowrank"
    plan_type = LowRankPlan

    def check(self, op: WeightedOp, plan: Plan) -> Optional[str]:
        return _conv_problem(op)

    def emit(self, b: Builder, plan: LowRankPlan) -> None:
        op = b.op
        up, down = factors(op.matrix(), plan.rank)
        middle = _conv(b, op.node.inputs[0], op.tensor_from(down), None, "conv_rank", dict(op.node.attrs))
        ones = (1,) * (len(op.weight.shape) - 2)
        _conv(b, middle, up.reshape(*up.shape, *ones), _bias(op), "conv_up", {"kernel_shape": list(ones)},
              op.node.outputs[0])


CONV_FORMS: dict[str, Form] = {form.name: form for form in (ConvGrouped(), ConvBranches(), ConvLowRank())}
