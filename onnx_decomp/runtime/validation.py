"""Validation: the rewritten model against the original in ONNX Runtime, output by output.

Rule: both models run on the given inputs (one set) or on ``check`` random input sets, and where the model
leaves the batch free (inputs whose first dim is symbolic) on the first set cut to its first rows at each
size of ``EDGE_BATCHES`` below its own: a rewrite must take every batch size the original takes, 0 and 1
included. A size the original cannot run is not compared; a rewritten model that fails where the original
ran differs. Per output the worst difference over the sets is kept (largest absolute, largest relative,
relative L2) and judged by the ``Tolerance`` (``config.Tolerance``); values that are equal, the same
infinity or NaN in both included, differ by 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx

from onnx_decomp.config import SessionConfig, Tolerance, ValidationConfig
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.model_io import ModelLike
from onnx_decomp.io.shapes import InputSpec, batched_inputs
from onnx_decomp.runtime.sessions import make_session, random_inputs, run_session, session_device

logger = logging.getLogger(__name__)


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    rel_l2: float
    ok: bool


EDGE_BATCHES = (0, 1)


@dataclass
class ValidationResult:
    """Original vs rewritten over ``runs`` input sets and the first one at ``edge_batches``; per output the
    worst difference seen."""

    device: str
    runs: int
    tolerance: Tolerance
    outputs: list[OutputDiff] = field(default_factory=list)
    edge_batches: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(diff.ok for diff in self.outputs)


def _failed(name: str) -> OutputDiff:
    return OutputDiff(name, float("inf"), float("inf"), float("inf"), False)


def _diff(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> OutputDiff:
    """The differences of one output and whether they are within ``tolerance``."""
    if expected.shape != actual.shape:
        return _failed(name)
    if not np.issubdtype(expected.dtype, np.number):
        gap = 0.0 if np.array_equal(expected, actual) else float("inf")
        return OutputDiff(name, gap, gap, gap, gap == 0.0)
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    same = (e == a) | (np.isnan(e) & np.isnan(a))  # inf - inf would be NaN: equal values differ by 0
    with np.errstate(invalid="ignore", over="ignore"):  # infinities in the outputs (Inf weights)
        error = np.nan_to_num(np.where(same, 0.0, np.abs(a - e)), nan=np.inf)
        rel = error / np.maximum(np.abs(np.nan_to_num(e)), np.finfo(np.float64).tiny)
        rel_l2 = float(np.linalg.norm(error) / max(np.linalg.norm(np.nan_to_num(e)), np.finfo(np.float64).tiny))
    if tolerance.rel_l2 is not None:
        ok = rel_l2 <= tolerance.rel_l2
    else:
        ok = bool(np.all(error <= tolerance.atol + tolerance.rtol * np.abs(np.nan_to_num(e))))
    return OutputDiff(name, float(error.max(initial=0.0)), float(rel.max(initial=0.0)), rel_l2, ok)


def _edge_sets(inputs: dict[str, np.ndarray], batched: set[str]) -> dict[int, dict[str, np.ndarray]]:
    """``inputs`` cut along the first axis of the ``batched`` inputs to each size of ``EDGE_BATCHES`` below
    theirs (none when they disagree on it)."""
    sizes = {len(inputs[name]) for name in batched if name in inputs}
    if len(sizes) != 1:
        return {}
    batch = sizes.pop()
    return {n: {name: array[:n] if name in batched else array for name, array in inputs.items()}
            for n in EDGE_BATCHES if n < batch}


Runs = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]  # inputs by name, output names -> outputs


def validate(original: onnx.ModelProto, rewritten: ModelLike, specs: Sequence[InputSpec],
             config: ValidationConfig, tolerance: Tolerance, session: SessionConfig = SessionConfig(),
             base_dir: Optional[Path] = None) -> ValidationResult:
    """Run both models (module rule); random inputs follow ``specs``; external-data references of either lie
    under ``base_dir``. The original runs first and its session is gone before the rewritten one is made, so a
    large model's weights are held by one ONNX Runtime session at a time."""
    def candidate() -> tuple[Runs, str]:
        made = make_session(rewritten, session, base_dir)
        return partial(run_session, made), session_device(made)
    return compare(original, candidate, specs, config, tolerance, session, base_dir)


def compare(original: onnx.ModelProto, candidate: Callable[[], tuple[Runs, str]], specs: Sequence[InputSpec],
            config: ValidationConfig, tolerance: Tolerance, session: SessionConfig = SessionConfig(),
            base_dir: Optional[Path] = None) -> ValidationResult:
    """``validate`` with what ``candidate()`` runs, and the device it runs on, in place of the rewritten
    model: made once the original's session is gone."""
    reference = make_session(original, session, base_dir)
    names = [o.name for o in reference.get_outputs()]
    if config.inputs is not None:
        expected = {i.name for i in reference.get_inputs()}
        if not expected <= set(config.inputs):
            raise UnsupportedConstructError(
                f"--inputs has {sorted(config.inputs)}, the model takes {sorted(expected)}")
        input_sets = [{name: config.inputs[name] for name in expected}]  # other arrays (labels) are ignored
        what = "the inputs given (--inputs)"
    else:
        rng = np.random.default_rng(config.seed)
        input_sets = [random_inputs(specs, rng) for _ in range(config.check)]
        what = ("the inputs drawn at random (if the model needs real values or sizes, pass --inputs data.npz "
                "or --input-shape NAME:D1,D2)")
    references = [run_session(reference, inputs, names, what) for inputs in input_sets]
    edges = {}
    for size, inputs in _edge_sets(input_sets[0], batched_inputs(original)).items() if input_sets else ():
        try:
            edges[size] = inputs, run_session(reference, inputs, names)
        except UnsupportedConstructError:  # the original does not take this size: nothing to keep
            logger.info("validation: the original does not run at batch %d", size)
    del reference
    runs, device = candidate()
    diffs: dict[str, list[OutputDiff]] = {name: [] for name in names}
    for inputs, outputs in [*zip(input_sets, references), *edges.values()]:
        try:
            actual = runs(inputs, names)
        except UnsupportedConstructError as error:  # the original ran on these inputs: the rewrite differs
            logger.warning("the rewritten model fails where the original runs: %s", error)
            actual = [None] * len(names)
        for name, expected, output in zip(names, outputs, actual):
            diffs[name].append(_failed(name) if output is None else _diff(name, expected, output, tolerance))
    result = ValidationResult(device, len(input_sets), tolerance, [
        OutputDiff(name, max(d.max_abs for d in ds), max(d.max_rel for d in ds), max(d.rel_l2 for d in ds),
                   all(d.ok for d in ds))
        for name, ds in diffs.items()
    ], sorted(edges))
    logger.info("validation on %s over %d input sets (and at batch %s): %s", result.device, result.runs,
                result.edge_batches, "ok" if result.ok else "MISMATCH")
    return result
