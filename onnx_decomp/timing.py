"""Timing gate: keep a node's rewrite only where ONNX Runtime runs it faster than the dense node.

Rule: the candidate is cut out as a one-node model at its concrete input shape, rewritten with its plan,
and both models run interleaved after a warm-up; the node's speedup is the median over pairs of
dense time / rewritten time. The rewrite is kept when the speedup is at least ``min_speedup``
(default 1.1: above the run-to-run noise of a shared machine).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_decomp.runtime import make_session
from passes.block_rewrite import BlockRewrite
from passes.linear_ops import LinearOp
from passes.plan import BlockPlan

DEFAULT_MIN_SPEEDUP = 1.1
BUDGET_S, MAX_PAIRS = 0.3, 25


def median_speedup(dense, candidate, feed: dict, budget_s: float = BUDGET_S, max_pairs: int = MAX_PAIRS,
                   min_pairs: int = 5) -> float:
    """Median over interleaved runs of dense time / candidate time (sessions warmed up first)."""
    dense.run(None, feed)
    candidate.run(None, feed)
    ratios, start = [], time.perf_counter()
    while len(ratios) < min_pairs or (len(ratios) < max_pairs and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        dense.run(None, feed)
        t1 = time.perf_counter()
        candidate.run(None, feed)
        ratios.append((t1 - t0) / max(time.perf_counter() - t1, 1e-9))
    return float(np.median(ratios))


def _one_node_model(op: LinearOp, x_shape: Sequence[int], dtype, parent: gs.Graph,
                    plan=None) -> onnx.ModelProto:
    """The node alone on input ``x`` of ``x_shape``, rewritten with ``plan`` if given."""
    x, y = gs.Variable("x", dtype, list(x_shape)), gs.Variable("y", dtype)
    weights = [gs.Constant(t.name, t.values) for t in (op.weight, op.bias) if t is not None]
    node = gs.Node(op.node.op, op.node.name, dict(op.node.attrs), [x, *weights], [y])
    graph = gs.Graph([node], [x], [y], opset=parent.opset, ir_version=parent.ir_version,
                     import_domains=parent.import_domains)
    if plan is not None:
        BlockRewrite({op.node.name: plan})(graph)
    return gs.export_onnx(graph)


def measure_speedup(op: LinearOp, plan: BlockPlan, x_shape: Sequence[int], parent: gs.Graph,
                    provider: str = "auto", seed: int = 0) -> float:
    """Measured dense/rewritten time ratio of one node at input shape ``x_shape``."""
    dtype = np.dtype(op.node.inputs[0].dtype or op.weight.dtype)
    dense, rewritten = (make_session(_one_node_model(op, x_shape, dtype, parent, p), provider)
                        for p in (None, plan))
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(dtype)
    return median_speedup(dense, rewritten, {"x": x})
