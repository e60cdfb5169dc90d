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


def _ort_message(error: Exception) -> str:
    """An onnxruntime error on one line, without its status prefix and C++ source location."""
    message = " ".join(str(error).split()).split(" : ")[-1]
    return re.sub(r"^\S+\.(cc|h):\d+ .*?\) ", "", message)


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
            raise UnsupportedConstructError(f"ONNX Runtime cannot load the model: {_ort_message(error)}") from None
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


@dataclass(frozen=True)
class Tolerance:
    """Exact mode: every element ``|new - old| <= atol + rtol * |old|`` (NaN equals NaN). Lossy mode
    (``rel_l2`` set): per output ``||new - old||_2 / ||old||_2 <= rel_l2``. The defaults hold float32
    reassociation over 4096-long sums (measured up to 8.7e-5 absolute) with margin."""

    rtol: float = 1e-3
    atol: float = 1e-4
    rel_l2: Optional[float] = None

    def describe(self) -> str:
        if self.rel_l2 is not None:
            return f"relative L2 <= {self.rel_l2:g}"
        return f"rtol={self.rtol:g} atol={self.atol:g}"


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    rel_l2: float
    ok: bool


@dataclass
class ValidationResult:
    """Original vs rewritten over ``runs`` input sets; per output the worst difference seen."""

    device: str
    runs: int
    tolerance: Tolerance
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(diff.ok for diff in self.outputs)


def _diff(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> OutputDiff:
    """The differences of one output and whether they are within ``tolerance``."""
    if expected.shape != actual.shape:
        return OutputDiff(name, float("inf"), float("inf"), float("inf"), False)
    if not np.issubdtype(expected.dtype, np.number):
        gap = 0.0 if np.array_equal(expected, actual) else float("inf")
        return OutputDiff(name, gap, gap, gap, gap == 0.0)
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    error = np.nan_to_num(np.where(np.isnan(e) & np.isnan(a), 0.0, np.abs(a - e)), nan=np.inf)
    rel = error / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
    rel_l2 = float(np.linalg.norm(error) / max(np.linalg.norm(np.nan_to_num(e)), np.finfo(np.float64).tiny))
    if tolerance.rel_l2 is not None:
        ok = rel_l2 <= tolerance.rel_l2
    else:
        ok = bool(np.all(error <= tolerance.atol + tolerance.rtol * np.abs(np.nan_to_num(e))))
    return OutputDiff(name, float(error.max(initial=0.0)), float(rel.max(initial=0.0)), rel_l2, ok)


def validate(original: onnx.ModelProto, rewritten: onnx.ModelProto, runs: int, provider: str = "auto",
             input_shapes: Optional[Mapping[str, Sequence[int]]] = None, tolerance: Tolerance = Tolerance(),
             seed: int = 0, feeds: Optional[Mapping[str, np.ndarray]] = None) -> ValidationResult:
    """Run both models on ``feeds`` (one given input set) or on ``runs`` random input sets, and keep,
    per output, the worst difference."""
    reference, candidate = make_session(original, provider), make_session(rewritten, provider)
    names = [o.name for o in reference.get_outputs()]
    if feeds is not None:
        expected = {i.name for i in reference.get_inputs()}
        if not expected <= set(feeds):
            raise UnsupportedConstructError(f"--inputs has {sorted(feeds)}, the model takes {sorted(expected)}")
        input_sets = [{name: feeds[name] for name in expected}]  # other arrays (labels) are ignored
    else:
        specs, rng = input_specs(original, input_shapes), np.random.default_rng(seed)
        input_sets = (random_inputs(specs, rng) for _ in range(runs))
    diffs: dict[str, list[OutputDiff]] = {name: [] for name in names}
    for inputs in input_sets:
        try:
            pairs = zip(names, reference.run(names, inputs), candidate.run(names, inputs))
        except Exception as error:  # onnxruntime's own exception types (wrong shape or dtype, ...)
            raise UnsupportedConstructError(f"ONNX Runtime failed on the inputs: {_ort_message(error)}") from None
        for name, expected, actual in pairs:
            diffs[name].append(_diff(name, expected, actual, tolerance))
    result = ValidationResult(session_device(candidate), len(next(iter(diffs.values()), [])), tolerance, [
        OutputDiff(name, max(d.max_abs for d in ds), max(d.max_rel for d in ds), max(d.rel_l2 for d in ds),
                   all(d.ok for d in ds))
        for name, ds in diffs.items()
    ])
    logger.info("validation on %s over %d input sets: %s", result.device, result.runs,
                "ok" if result.ok else "MISMATCH")
    return result
