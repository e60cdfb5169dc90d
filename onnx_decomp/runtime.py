"""ONNX Runtime sessions, honest provider selection, input generation and output comparison.

Provider rule: ``cpu`` uses the CPU provider; ``cuda`` requires that the session really runs on CUDA
(``session.get_providers()``, not merely ``get_available_providers()``); ``auto`` takes CUDA when a
session really gets it, else CPU.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx

from onnx_decomp.errors import DecompError, UnsupportedConstructError
from onnx_decomp.model_io import model_source

logger = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
PROVIDERS = ("auto", "cpu", "cuda")


def onnxruntime():
    """The onnxruntime module, or a clear error naming the extra to install."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DecompError(
            "onnxruntime is not installed: pip install 'onnx-decomp[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return ort


def make_session(model: onnx.ModelProto, provider: str = "auto"):
    """An InferenceSession on the requested provider (see the module rule)."""
    if provider not in PROVIDERS:
        raise UnsupportedConstructError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    ort = onnxruntime()
    has_cuda = CUDA in ort.get_available_providers()
    if provider == "cuda" and not has_cuda:
        raise UnsupportedConstructError(
            "--provider cuda: this onnxruntime has no CUDA provider (install onnx-decomp[gpu])"
        )
    providers = [CUDA, CPU] if provider != "cpu" and has_cuda else [CPU]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with model_source(model) as source:
        try:
            session = ort.InferenceSession(source, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
            message = str(error).strip().splitlines()[0].split(" : ")[-1]
            message = re.sub(r"^\S+\.(cc|h):\d+ .*?\) ", "", message)  # drop the C++ source location
            raise UnsupportedConstructError(f"ONNX Runtime cannot load the model: {message}") from None
    if provider == "cuda" and session.get_providers()[0] != CUDA:
        raise UnsupportedConstructError("--provider cuda: the session could not start on CUDA")
    return session


def session_device(session) -> str:
    """``cuda`` or ``cpu``: where the session really runs."""
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def input_specs(model: onnx.ModelProto, overrides: Optional[Mapping[str, Sequence[int]]] = None,
                notes: Optional[list[str]] = None) -> list[InputSpec]:
    """Concrete shapes of the graph inputs: ``overrides`` first, symbolic or unknown dims as 1 (noted)."""
    overrides = dict(overrides or {})
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        if value.name in overrides:
            shape = tuple(overrides.pop(value.name))
            if len(shape) != len(dims):
                raise UnsupportedConstructError(
                    f"--input-shape {value.name}: rank {len(shape)} given, the input has rank {len(dims)}"
                )
        else:
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
            free = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
            if free and notes is not None:
                notes.append(f"input {value.name!r}: dims {free} set to 1 (use --input-shape)")
        specs.append(InputSpec(value.name, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type),
                               shape))
    if overrides:
        raise UnsupportedConstructError(f"--input-shape names no input of the model: {sorted(overrides)}")
    return specs


def random_inputs(specs: Sequence[InputSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard normal floats, integers in {0, 1} (safe as indices), random Booleans."""
    feeds = {}
    for spec in specs:
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = np.asarray(rng.standard_normal(spec.shape), dtype=spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            feeds[spec.name] = np.asarray(rng.integers(0, 2, spec.shape), dtype=spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = np.asarray(rng.random(spec.shape) < 0.5)
        else:
            raise UnsupportedConstructError(f"input {spec.name!r}: cannot generate {spec.dtype} data")
    return feeds


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class ValidationResult:
    """Original vs rewritten over ``runs`` input sets; per output the worst difference seen."""

    device: str
    runs: int
    rtol: float
    atol: float
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(diff.ok for diff in self.outputs)


def _diff(name: str, expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> OutputDiff:
    """Element-wise rule: ``|actual - expected| <= atol + rtol * |expected|`` (NaN equals NaN)."""
    if expected.shape != actual.shape:
        return OutputDiff(name, float("inf"), float("inf"), False)
    if not np.issubdtype(expected.dtype, np.number):
        equal = bool(np.array_equal(expected, actual))
        return OutputDiff(name, 0.0 if equal else float("inf"), 0.0 if equal else float("inf"), equal)
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    both_nan = np.isnan(e) & np.isnan(a)
    error = np.where(both_nan, 0.0, np.abs(a - e))
    error = np.nan_to_num(error, nan=np.inf)
    rel = error / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
    ok = bool(np.all(error <= atol + rtol * np.abs(np.nan_to_num(e))))
    return OutputDiff(name, float(error.max(initial=0.0)), float(rel.max(initial=0.0)), ok)


def validate(original: onnx.ModelProto, rewritten: onnx.ModelProto, runs: int, provider: str = "auto",
             input_shapes: Optional[Mapping[str, Sequence[int]]] = None, rtol: float = 1e-4,
             atol: float = 1e-5, seed: int = 0, notes: Optional[list[str]] = None) -> ValidationResult:
    """Run both models on ``runs`` random input sets and keep, per output, the worst difference."""
    reference, candidate = make_session(original, provider), make_session(rewritten, provider)
    specs = input_specs(original, input_shapes, notes)
    names = [o.name for o in reference.get_outputs()]
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[OutputDiff]] = {name: [] for name in names}
    for _ in range(runs):
        feeds = random_inputs(specs, rng)
        for name, expected, actual in zip(names, reference.run(names, feeds), candidate.run(names, feeds)):
            diffs[name].append(_diff(name, expected, actual, rtol, atol))
    result = ValidationResult(session_device(candidate), runs, rtol, atol, [
        OutputDiff(name, max(d.max_abs for d in ds), max(d.max_rel for d in ds), all(d.ok for d in ds))
        for name, ds in diffs.items()
    ])
    logger.info("validation on %s over %d runs: %s", result.device, runs, "ok" if result.ok else "MISMATCH")
    return result
