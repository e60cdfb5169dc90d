"""Rewrite a MatMul/Gemm into independent branches according to its block plan.

Rewrite rule, for ``y = op(x, W)`` with plan branches ``(rows_k, cols_k)`` and constant rows ``R0``::

    x_k = select(x, cols_k)                       # Slice when cols_k is a contiguous range, else permute
    y_k = MatMul(x_k, W[rows_k, cols_k].T)         # Gemm(x_k, B_k, C_k) with the node's alpha/beta/transB
    c   = Expand(beta * C[..., R0] or 0, shape(x)[:-1] + [|R0|])
    y   = permute(Concat(y_1, ..., y_n, c, axis=-1), inverse_order)

``permute`` is Transpose -> Gather(axis=0) -> Transpose when the rank is known, else Gather(axis=-1).
When branches read disjoint inputs, the input is permuted once and each branch Slices its range.
The final permute is omitted when the concatenation is already in output order, the Concat when there is one
piece, the selection when a branch reads every input. Branch weights are shared between nodes that use the
same initializer with the same plan. Weight entries outside the plan are dropped: the plan is the mask.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from passes.infra import Pass, PassError, PassResult
from passes.linear_ops import LinearOp, find_linear_ops
from passes.plan import BlockPlan

logger = logging.getLogger(__name__)

MIN_OPSET = 11


def _index(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


class _Builder:
    """Emits the nodes that replace one LinearOp, naming every new tensor after the node."""

    def __init__(self, op: LinearOp, shared: dict):
        self.op, self.shared, self.prefix = op, shared, op.node.name
        shape = op.node.inputs[0].shape
        self.rank = len(shape) if shape is not None else 0  # of input and output; 0 when unknown
        self.nodes: list[gs.Node] = []

    def constant(self, suffix: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(f"{self.prefix}/{suffix}", np.ascontiguousarray(values))

    def emit(self, op_type: str, suffix: str, inputs, attrs=None, output=None) -> gs.Variable:
        output = output if output is not None else gs.Variable(f"{self.prefix}/{suffix}")
        self.nodes.append(
            gs.Node(op_type, f"{self.prefix}/{suffix}", attrs or {}, list(inputs), [output])
        )
        return output

    def select(self, x, cols: np.ndarray, n_in: int, suffix: str):
        """The input columns ``cols`` of ``x``, in that order, along the last axis."""
        if np.array_equal(cols, np.arange(n_in)):
            return x
        if np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols))):
            bounds = [self.constant(f"{suffix}_{k}", _index([v])) for k, v in
                      (("start", cols[0]), ("end", cols[-1] + 1), ("axis", -1))]
            return self.emit("Slice", suffix, [x, *bounds])
        return self.permute(x, cols, suffix)

    def permute(self, x, order: np.ndarray, suffix: str, output=None):
        """``x[..., order]``. With a known rank r >= 2, as Transpose -> Gather(axis=0) -> Transpose:
        ONNX Runtime gathers whole rows far faster than strided last-axis elements (design.md 6)."""
        index = self.constant(f"{suffix}_idx", _index(order))
        rank = self.rank
        if rank < 2:
            return self.emit("Gather", suffix, [x, index], {"axis": -1}, output)
        front = self.emit("Transpose", f"{suffix}_front", [x], {"perm": [rank - 1, *range(rank - 1)]})
        rows = self.emit("Gather", suffix, [front, index], {"axis": 0})
        return self.emit("Transpose", f"{suffix}_back", [rows], {"perm": [*range(1, rank), 0]}, output)

    def branch_weight(self, rows: np.ndarray, cols: np.ndarray, k: int) -> gs.Constant:
        """``W[rows, cols]`` in the node's own layout, shared with other users of the same weight."""
        key = (self.op.weight.name, self.op.transposed, rows.tobytes(), cols.tobytes())
        if key not in self.shared:
            block = self.op.matrix()[np.ix_(rows, cols)]
            self.shared[key] = self.constant(f"W{k}", block if self.op.transposed else block.T)
        return self.shared[key]

    def bias_part(self, rows: np.ndarray, scale: float = 1.0):
        """Gemm's C restricted to output ``rows`` (unchanged when C broadcasts over outputs)."""
        c = self.op.bias.values
        n_out = self.op.shape[0]
        part = c[..., rows] if c.ndim and c.shape[-1] == n_out else c
        return (part * scale).astype(c.dtype)


class BlockRewrite(Pass):
    __doc__ = __doc__

    def __init__(self, plans: Mapping[str, BlockPlan]):
        self.plans = dict(plans)

    def requires(self, graph: gs.Graph) -> None:
        if self.plans and (graph.opset or 0) < MIN_OPSET:
            raise PassError(f"block rewrite needs opset >= {MIN_OPSET}, graph has {graph.opset}")

    def ensures(self, graph: gs.Graph) -> None:
        left = {op.node.name for op in find_linear_ops(graph)[0]} & set(self.plans)
        if left:
            raise PassError(f"planned nodes still present after the rewrite: {sorted(left)}")

    def call(self, graph: gs.Graph) -> PassResult:
        shared: dict = {}
        ops = {op.node.name: op for op in find_linear_ops(graph)[0]}
        missing = sorted(set(self.plans) - set(ops))
        if missing:
            raise PassError(f"plans name nodes that are not rewritable MatMul/Gemm: {missing}")
        touched = set()
        for name, plan in self.plans.items():
            op = ops[name]
            if (plan.n_out, plan.n_in) != op.shape:
                raise PassError(f"{name}: plan is {plan.n_out}x{plan.n_in}, weight is {op.shape}")
            builder = _Builder(op, shared)
            self._rewrite(builder, plan)
            op.graph.nodes.extend(builder.nodes)
            op.node.inputs.clear()
            op.node.outputs.clear()
            op.graph.nodes.remove(op.node)
            touched.add(id(op.graph))
            logger.debug("%s: %d branches, %d constant rows, %.1fx fewer MACs", name,
                         len(plan.branches), len(plan.constant_rows), plan.flop_reduction)
        for subgraph in [graph, *graph.subgraphs(recursive=True)]:
            if id(subgraph) in touched:
                subgraph.toposort(recurse_subgraphs=False)
        return PassResult(graph, bool(self.plans))

    @staticmethod
    def _rewrite(b: _Builder, plan: BlockPlan) -> None:
        op, (x, y) = b.op, (b.op.node.inputs[0], b.op.node.outputs[0])
        gemm = op.node.op == "Gemm"
        attrs = {k: v for k, v in op.node.attrs.items() if k in ("alpha", "beta", "transB")}
        pieces, reads = [], [branch.cols for branch in plan.branches]
        if BlockRewrite._disjoint(reads):  # permute the input once; each branch then reads a range
            x = b.select(x, np.concatenate(reads), plan.n_in, "x_perm")
            ends = np.cumsum([len(cols) for cols in reads])
            reads = [np.arange(end - len(cols), end) for cols, end in zip(reads, ends)]
        for k, (branch, cols) in enumerate(zip(plan.branches, reads)):
            x_k = b.select(x, cols, plan.n_in, f"x{k}")
            inputs = [x_k, b.branch_weight(branch.rows, branch.cols, k)]
            if gemm and op.bias is not None:
                inputs.append(b.constant(f"C{k}", b.bias_part(branch.rows)))
            pieces.append(b.emit("Gemm" if gemm else "MatMul", f"y{k}", inputs, attrs if gemm else {}))
        if len(plan.constant_rows):
            pieces.append(BlockRewrite._constant_rows(b, plan, x))
        joined = pieces[0] if len(pieces) == 1 else b.emit("Concat", "concat", pieces, {"axis": -1})
        order = plan.output_order()
        if np.array_equal(order, np.arange(plan.n_out)):
            b.nodes[-1].outputs = [y]  # the last node made `joined`: let it write the output
        else:
            b.permute(joined, np.argsort(order), "unpermute", output=y)

    @staticmethod
    def _disjoint(reads: list[np.ndarray]) -> bool:
        """True when branches read disjoint inputs and at least one read is not a contiguous range."""
        if len(reads) < 2:
            return False
        flat = np.concatenate(reads)
        scattered = any(cols[-1] - cols[0] + 1 != len(cols) for cols in reads)
        return scattered and len(np.unique(flat)) == len(flat)

    @staticmethod
    def _constant_rows(b: _Builder, plan: BlockPlan, x) -> gs.Variable:
        """Outputs that read no input: ``beta * C`` for Gemm with a bias, zero otherwise."""
        op = b.op
        rows = plan.constant_rows
        if op.bias is not None:
            value = b.bias_part(rows, op.node.attrs.get("beta", 1.0))
        else:
            value = np.zeros(len(rows), dtype=op.weight.dtype)
        value = value.reshape((1,) * max(0, 1 - value.ndim) + value.shape)
        shape_x = b.emit("Shape", "shape", [x])
        batch = b.emit("Slice", "batch_shape", [shape_x, b.constant("zero", _index([0])),
                                                b.constant("minus_one", _index([-1]))])
        shape = b.emit("Concat", "const_shape", [batch, b.constant("n_const", _index([len(rows)]))],
                       {"axis": 0})
        return b.emit("Expand", "const", [b.constant("const_value", value), shape])
