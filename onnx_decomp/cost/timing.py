"""Timing: how much faster ONNX Runtime runs a node's rewrite than the dense node.

Rule: the candidate's node is cut out as a one-node model at its concrete input shape, rewritten with its
plan, and both models run interleaved after a warm-up; the speedup is the median over samples of dense
time / rewritten time. A sample runs each model enough times to last about ``GROUP_S`` (microsecond nodes
need groups), and which model goes first alternates.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np

from onnx_decomp.config import SessionConfig
from onnx_decomp.decisions import Candidate
from onnx_decomp.io.graph import export_graph
from onnx_decomp.io.shapes import InputSpec
from onnx_decomp.runtime.sessions import make_session, random_inputs, run_session
from onnx_decomp_passes import BlockRewrite, one_node_graph

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

BUDGET_S, MAX_PAIRS = 0.3, 50
GROUP_S = 2e-3
Timer = Callable[[Candidate], Optional[float]]


def _timed(session, feed: dict, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        session.run(None, feed)
    return time.perf_counter() - start


def median_speedup(dense, candidate, feed: dict, budget_s: float = BUDGET_S, max_pairs: int = MAX_PAIRS,
                   min_pairs: int = 5) -> float:
    """Median over interleaved samples of dense time / candidate time (module rule), for two sessions."""
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


def measure_speedup(candidate: Candidate, x_shape: Sequence[int], root: "gs.Graph",
                    session: SessionConfig = SessionConfig(), seed: int = 0) -> float:
    """Measured dense/rewritten time ratio of the candidate's node alone at input shape ``x_shape``."""
    op = candidate.op
    dtype = np.dtype(op.node.inputs[0].dtype or op.weight.dtype)
    dense, rewritten = (one_node_graph(op, x_shape, dtype, root) for _ in range(2))
    BlockRewrite({op.node.name: candidate.plan})(rewritten)
    sessions = [make_session(export_graph(graph), session) for graph in (dense, rewritten)]
    feed = random_inputs([InputSpec("x", dtype, tuple(x_shape))], np.random.default_rng(seed))
    for one in sessions:  # a failure at this shape is one line, not a traceback from the timing loop
        run_session(one, feed, what=f"node {op.node.name} alone at input shape {list(x_shape)}")
    return median_speedup(*sessions, feed)


def node_timer(root: "gs.Graph", shapes: Mapping[str, list], session: SessionConfig) -> Timer:
    """Times a candidate at its node's input shape in ``shapes``; None when that shape is unresolved."""

    def timer(candidate: Candidate) -> Optional[float]:
        x_shape = shapes.get(candidate.op.node.inputs[0].name)
        if not x_shape or None in x_shape:
            return None
        return measure_speedup(candidate, x_shape, root, session)

    return timer
