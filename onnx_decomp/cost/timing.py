"""Timing: how much faster ONNX Runtime runs a node's rewrite than the dense node.

Rule: the candidate's node is cut out as a one-node model at its concrete input shape, rewritten in a form
(``cost.isolate``), and both models run interleaved after a warm-up; the speedup is the median over samples
of dense time / rewritten time. A sample runs each model enough times to last about ``GROUP_S`` (the first
model's time; microsecond nodes need groups), and which model goes first rotates. Timing sessions do not
spin (``SessionConfig.spin``): an idle session's spinning threads would take the cores of the one timed.
``interleaved_times`` does the same for any number of models (``onnx-decomp bench``).
"""

from __future__ import annotations

import math
from dataclasses import replace
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from onnx_decomp.config import SessionConfig
from onnx_decomp.cost.isolate import one_node_models
from onnx_decomp.decisions import Candidate
from onnx_decomp.io.shapes import InputSpec
from onnx_decomp.runtime.sessions import make_session, random_inputs, run_session
from onnx_decomp_passes import Form

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

BUDGET_S, MAX_PAIRS = 0.3, 50
GROUP_S = 2e-3


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}  # cpu: this thread's CPU time


def _timed(session, feed: dict, repeat: int, clock=time.perf_counter) -> float:
    start = clock()
    for _ in range(repeat):
        session.run(None, feed)
    return clock() - start


def interleaved_times(sessions: Sequence, feed: dict, budget_s: float = BUDGET_S, max_rounds: int = MAX_PAIRS,
                      min_rounds: int = 5, clock: str = "wall") -> np.ndarray:
    """``[rounds, sessions]`` seconds per run (module rule): after one warm-up run each, every round times
    every session in turn, starting one session later than the round before. ``clock="cpu"`` counts the
    calling thread's CPU time, where sessions with one intra-op thread do all their work: time the machine
    gave to other processes is not counted."""
    tick = CLOCKS[clock]
    for session in sessions:
        _timed(session, feed, 1)
    repeat = max(1, math.ceil(GROUP_S / max(_timed(sessions[0], feed, 1, tick), 1e-9)))
    rounds, start = [], time.perf_counter()
    while len(rounds) < min_rounds or (len(rounds) < max_rounds and time.perf_counter() - start < budget_s):
        times = [0.0] * len(sessions)
        for step in range(len(sessions)):
            i = (len(rounds) + step) % len(sessions)
            times[i] = _timed(sessions[i], feed, repeat, tick) / repeat
        rounds.append(times)
    return np.array(rounds)


def median_speedup(dense, candidate, feed: dict, budget_s: float = BUDGET_S, max_pairs: int = MAX_PAIRS,
                   min_pairs: int = 5) -> float:
    """Median over interleaved samples of dense time / candidate time (module rule), for two sessions."""
    times = interleaved_times([dense, candidate], feed, budget_s, max_pairs, min_pairs)
    return float(np.median(times[:, 0] / np.maximum(times[:, 1], 1e-12)))


def measure_speedup(candidate: Candidate, form: Form, x_shape: Sequence[int], root: "gs.Graph",
                    session: SessionConfig = SessionConfig(), seed: int = 0) -> float:
    """Measured dense/rewritten time ratio of the candidate's node alone in ``form`` at input shape
    ``x_shape``."""
    models = one_node_models(candidate, form, x_shape, root)
    sessions = [make_session(model, replace(session, spin=False)) for model in models]
    dtype = np.dtype(candidate.op.node.inputs[0].dtype or candidate.op.weight.dtype)
    feed = random_inputs([InputSpec("x", dtype, tuple(x_shape))], np.random.default_rng(seed))
    for one in sessions:  # a failure at this shape is one line, not a traceback from the timing loop
        run_session(one, feed, what=f"node {candidate.op.node.name} alone at input shape {list(x_shape)}")
    return median_speedup(*sessions, feed)
