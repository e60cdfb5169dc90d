"""Timing gate: keep a node's rewrite only where ONNX Runtime runs it faster than the dense node.

Rule: the candidate is cut out as a one-node model at its concrete input shape, rewritten with its plan,
and both models run interleaved after a warm-up; the node's speedup is the median over pairs of
dense time / rewritten time. The rewrite is kept when the speedup is at least ``min_speedup``
(default 1.1: above the run-to-run noise of a shared machine).
"""

from __future__ import annotations

import math
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
BUDGET_S, MAX_PAIRS = 0.3, 50
GROUP_S = 2e-3  # one sample runs a model enough times to last this long: microsecond nodes need groups


def _timed(session, feed: dict, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        session.run(None, feed)
    return time.perf_counter() - start


def median_speedup(dense, candidate, feed: dict, budget_s: float = BUDGET_S, max_pairs: int = MAX_PAIRS,
                   min_pairs: int = 5) -> float:
    """Median over interleaved samples of dense time / candidate time. Sessions are warmed up first; a
    sample times a group of runs of each model lasting about GROUP_S; which model goes first alternates."""
    _timed(candidate, feed, 1)
    repeat = max(1, math.ceil(GROUP_S / max(_timed(dense, feed, 1), 1e-9)))
    ratios, start = [], time.perf_counter()
    while len(ratios) < min_pairs or (len(ratios) < max_pairs and time.perf_counter() - start < budget_s):
        if len(ratios) % 2:
            candidate_time, dense_time = _timed(candidate, feed, repeat), _timed(dense, feed, repeat)
        else:
            dense_time, candidate_time = _timed(dense, feed, repeat), _timed(candidate, feed, repeat)
        ratios.append(dense_time / max(candidate_time, 1e-12))
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
