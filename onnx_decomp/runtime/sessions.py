"""ONNX Runtime sessions with honest provider selection, and random inputs for them.

Provider rule: ``cpu`` uses the CPU provider; ``cuda`` requires that the session really runs on CUDA
(``session.get_providers()``, not merely ``get_available_providers()``); ``auto`` takes CUDA when a
session really gets it, else CPU. ONNX Runtime logs only fatal errors: the tool reports a failure itself,
on one line (``ort_message``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from onnx_decomp.config import SessionConfig
from onnx_decomp.errors import DecompError, UnsupportedConstructError
from onnx_decomp.io.model_io import ModelLike, model_source
from onnx_decomp.io.shapes import InputSpec

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
FATAL_ONLY = 4  # ONNX Runtime's log severity: 0 verbose ... 3 error, 4 fatal


def onnxruntime():
    """The onnxruntime module, or a clear error naming the extra to install."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DecompError(
            "onnxruntime is not installed: pip install 'onnx-decomp[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return ort


def ort_message(error: Exception) -> str:
    """An onnxruntime error on one line, without its status prefix and C++ source location."""
    message = " ".join(str(error).split()).split(" : ")[-1]
    return re.sub(r"^\S+\.(cc|h):\d+ .*?\) ", "", message)


def make_session(model: ModelLike, config: SessionConfig = SessionConfig(), base_dir: Optional[Path] = None):
    """An InferenceSession of a ModelProto (its external-data references under ``base_dir``) or a model file,
    on the configured provider (module rule) and thread count."""
    ort = onnxruntime()
    has_cuda = CUDA in ort.get_available_providers()
    if config.provider == "cuda" and not has_cuda:
        raise UnsupportedConstructError(
            "--provider cuda: this onnxruntime has no CUDA provider (install onnx-decomp[gpu])"
        )
    providers = [CUDA, CPU] if config.provider != "cpu" and has_cuda else [CPU]
    ort.set_default_logger_severity(FATAL_ONLY)
    options = ort.SessionOptions()
    options.log_severity_level = FATAL_ONLY
    if config.threads is not None:
        options.intra_op_num_threads = config.threads
    if not config.spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not config.optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = config.arena
    with model_source(model, base_dir) as source:
        try:
            session = ort.InferenceSession(source, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise UnsupportedConstructError(f"ONNX Runtime cannot load the model: {ort_message(error)}") from None
    if config.provider == "cuda" and session.get_providers()[0] != CUDA:
        raise UnsupportedConstructError("--provider cuda: the session could not start on CUDA")
    return session


def available_memory() -> "int | None":
    """Bytes of physical memory free now, where the system says (POSIX)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def run_session(session, feeds: dict, names=None, what: str = "the inputs") -> list:
    """``session.run`` with ONNX Runtime's failure as one line naming ``what`` it ran on."""
    try:
        return session.run(names, feeds)
    except Exception as error:  # onnxruntime's own exception types (wrong shape or dtype, allocation, ...)
        raise UnsupportedConstructError(f"ONNX Runtime failed on {what}: {ort_message(error)}") from None


def session_device(session) -> str:
    """``cuda`` or ``cpu``: where the session really runs."""
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


def random_inputs(specs: Sequence[InputSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard normal floats, integers in {0, 1} (safe as indices), random Booleans."""
    feeds = {}
    for spec in specs:
        needed = int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
        free = available_memory()
        if free is not None and needed > free:
            raise UnsupportedConstructError(
                f"input {spec.name!r} at shape {list(spec.shape)} needs {needed / 2**30:.1f} GiB, more than the "
                f"{free / 2**30:.1f} GiB free; give smaller shapes with --input-shape")
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = np.asarray(rng.standard_normal(spec.shape), dtype=spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            feeds[spec.name] = np.asarray(rng.integers(0, 2, spec.shape), dtype=spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = np.asarray(rng.random(spec.shape) < 0.5)
        else:
            raise UnsupportedConstructError(f"input {spec.name!r}: cannot generate {spec.dtype} data")
    return feeds
