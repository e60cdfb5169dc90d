"""The branch form: one sub-MatMul/Gemm per plan branch, concatenated and permuted back."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import Builder, index
from ..ops import Layout, WeightedOp
from ..plan import BlockPlan
from .base import Form


def _disjoint_and_scattered(reads: list[np.ndarray]) -> bool:
    """True when branches read disjoint inputs and at least one read is not a contiguous range."""
    if len(reads) < 2:
        return False
    flat = np.concatenate(reads)
    scattered = any(cols[-1] - cols[0] + 1 != len(cols) for cols in reads)
    return scattered and len(np.unique(flat)) == len(flat)


class Branches(Form):
    """For ``y = op(x, W)`` with plan branches ``(rows_k, cols_k)`` and constant rows ``R0``::

        x_k = select(x, cols_k)                       # Slice when cols_k is a contiguous range, else permute
        y_k = MatMul(x_k, W[rows_k, cols_k].T)         # Gemm(x_k, B_k, C_k) with the node's alpha/beta/transB
        c   = Expand(beta * C[..., R0] or 0, shape(x)[:-1] + [|R0|])
        y   = permute(Concat(y_1, ..., y_n, c, axis=-1), inverse_order)

    When branches read disjoint inputs, the input is permuted once and each branch Slices its range. The
    final permute is omitted when the concatenation is already in output order, the Concat when there is
    one piece, the selection when a branch reads every input. Weight entries outside the plan are dropped:
    the plan is the mask. Applies to every plan of a MatMul/Gemm.
    """

    name = "branches"

    def check(self, op: WeightedOp, plan: BlockPlan) -> Optional[str]:
        return "a Conv (conv forms)" if op.layout is Layout.KERNEL else None

    def emit(self, b: Builder, plan: BlockPlan) -> None:
        op, (x, y) = b.op, (b.op.node.inputs[0], b.op.node.outputs[0])
        gemm = op.node.op == "Gemm"
        attrs = {k: v for k, v in op.node.attrs.items() if k in ("alpha", "beta", "transB")}
        pieces, reads = [], [branch.cols for branch in plan.branches]
        if _disjoint_and_scattered(reads):  # permute the input once; each branch then reads a range
            x = b.select(x, np.concatenate(reads), plan.n_in, "x_perm")
            ends = np.cumsum([len(cols) for cols in reads])
            reads = [np.arange(end - len(cols), end) for cols, end in zip(reads, ends)]
        for k, (branch, cols) in enumerate(zip(plan.branches, reads)):
            with b.for_block(branch.block):
                x_k = b.select(x, cols, plan.n_in, f"x{k}")
                inputs = [x_k, b.branch_weight(branch.rows, branch.cols, k)]
                if gemm and op.bias is not None:
                    inputs.append(b.constant(f"C{k}", b.bias_part(branch.rows)))
                pieces.append(b.emit("Gemm" if gemm else "MatMul", f"y{k}", inputs, attrs if gemm else {}))
        if len(plan.constant_rows):
            pieces.append(self._constant_rows(b, plan, x))
        joined = pieces[0] if len(pieces) == 1 else b.emit("Concat", "concat", pieces, {"axis": -1})
        order = plan.output_order()
        if np.array_equal(order, np.arange(plan.n_out)):
            b.nodes[-1].outputs = [y]  # the last node made `joined`: let it write the output
        else:
            b.permute(joined, np.argsort(order), "unpermute", output=y)

    @staticmethod
    def _constant_rows(b: Builder, plan: BlockPlan, x) -> gs.Variable:
        """Outputs that read no input: ``beta * C`` for Gemm with a bias, zero otherwise."""
        op, rows = b.op, plan.constant_rows
        if op.bias is not None:
            value = b.bias_part(rows, op.node.attrs.get("beta", 1.0))
        else:
            value = np.zeros(len(rows), dtype=op.weight.dtype)
        value = value.reshape((1,) * max(0, 1 - value.ndim) + value.shape)
        shape_x = b.emit("Shape", "shape", [x])
        batch = b.emit("Slice", "batch_shape", [shape_x, b.constant("zero", index([0])),
                                                b.constant("minus_one", index([-1]))])
        shape = b.emit("Concat", "const_shape", [batch, b.constant("n_const", index([len(rows)]))],
                       {"axis": 0})
        return b.emit("Expand", "const", [b.constant("const_value", value), shape])
