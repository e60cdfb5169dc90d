"""The low-rank form: a weight of rank r as two products through an r-wide middle."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..builder import Builder
from ..ops import Layout, WeightedOp
from ..plan import LowRankPlan
from .base import Form


def factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(up [n_out, r], down [r, n_in])`` with ``up @ down`` the best rank-``r`` approximation of ``matrix``
    (its truncated SVD, the singular values split evenly between the factors), in float64."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


class LowRank(Form):
    """For ``y = op(x, W)`` with ``W [n_out, n_in]`` of rank at most r (``LowRankPlan``) and ``W = up @ down``
    its truncated SVD (``factors``)::

        t = MatMul(x, down^T [n_in, r])
        y = MatMul(t, up^T [r, n_out])                         # MatMul
        y = Gemm(t, up in the node's layout, C, alpha, beta)   # Gemm: its bias, alpha and beta kept

    Factors keep the weight's stored type (behind its Cast, as the weight was). Exact for a weight of rank r
    up to float rounding. Applies to MatMul/Gemm (2-D weights).
    """

    name = "lowrank"
    plan_type = LowRankPlan

    def check(self, op: WeightedOp, plan: LowRankPlan) -> Optional[str]:
        return "a Conv kernel is not a matrix product here" if op.layout is Layout.KERNEL else None

    def emit(self, b: Builder, plan: LowRankPlan) -> None:
        op = b.op
        dtype = op.weight.dtype
        up, down = factors(op.matrix(), plan.rank)
        key = ("lowrank", plan.rank)
        first = b.shared_weight((*key, "down"), "W_down", lambda: down.T.astype(dtype))
        middle = b.emit("MatMul", "x_rank", [op.node.inputs[0], first])
        if op.node.op == "Gemm":
            second = b.shared_weight((*key, "up"), "W_up", lambda: op.layout.from_matrix(up).astype(dtype))
            attrs = {k: v for k, v in op.node.attrs.items() if k in ("alpha", "beta", "transB")}
            inputs = [middle, second] + ([op.bias] if op.bias is not None else [])
            b.emit("Gemm", "y", inputs, attrs, output=op.node.outputs[0])
        else:
            second = b.shared_weight((*key, "up"), "W_up", lambda: up.T.astype(dtype))
            b.emit("MatMul", "y", [middle, second], output=op.node.outputs[0])
