"""The options of a run as small validated objects. The CLI parses its option groups into them; the
Python API takes them, or a short string for the common case (``gate="flops"``, ``session="cpu"``).
A bad value raises ``UnsupportedConstructError`` with one line when the object is made."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp_passes import FORMS as FORM_REGISTRY
from onnx_decomp_passes import BlockPlan

GATES = ("time", "flops", "cost")
FORMS = tuple(name for name, form in FORM_REGISTRY.items() if form.plan_type is BlockPlan)  # block forms' names
DEFAULT_FORMS = ("branches", "batched")
PROVIDERS = ("auto", "cpu", "cuda")
FDR_SCOPES = ("tensor", "model")
EDGE_MODES = ("entries", "grouped")


def _one_of(option: str, value, choices: tuple) -> None:
    if value not in choices:
        raise UnsupportedConstructError(f"{option} must be one of {choices}, got {value!r}")


def _at_least(option: str, value, minimum: float, strict: bool = False) -> None:
    """``value`` is a finite number ``>= minimum`` (``>`` when ``strict``)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > minimum if strict else
                                                                       value >= minimum)
    if not ok:
        raise UnsupportedConstructError(f"{option} must be a number {'>' if strict else '>='} {minimum:g}, "
                                        f"got {value!r}")


@dataclass(frozen=True)
class SessionConfig:
    """Where ONNX Runtime runs, for the timing gate, validation and benchmarks alike: ``provider`` (``auto``
    takes CUDA only when a session really gets it, ``cuda`` fails without it, ``cpu``), intra-op ``threads``
    (None: ONNX Runtime's default, one per core) and whether idle intra-op threads ``spin`` (ONNX Runtime's
    default; off, several sessions timed in turn in one process do not take each other's cores), whether
    its graph optimizations run (its default; off only to measure the float reordering they cause) and
    whether its CPU memory ``arena`` keeps what its runs allocate for the session's life (its default; off,
    what a run frees goes back: ``--by-block``)."""

    provider: str = "auto"
    threads: Optional[int] = None
    spin: bool = True
    optimize: bool = True
    arena: bool = True

    def __post_init__(self):
        _one_of("provider", self.provider, PROVIDERS)
        if self.threads is not None:
            _at_least("--threads", self.threads, 1)

    @classmethod
    def of(cls, value: Union[str, "SessionConfig"]) -> "SessionConfig":
        return value if isinstance(value, cls) else cls(provider=value)


@dataclass(frozen=True)
class GateConfig:
    """The cost gate (``planning.gate``): a candidate needs ``min_flop_reduction`` times fewer
    multiply-accumulates than dense; with ``kind="time"`` it must also run ``min_speedup`` times faster in
    ONNX Runtime, with ``kind="cost"`` be estimated so by the cost model (``cost.estimate``), at every batch
    size in ``batches`` (the first dim of inputs whose first dim is symbolic; empty: the input shapes as
    given); ``kind="flops"`` decides on the count alone. Each rewritten node takes the form among ``forms``
    the cost model estimates fastest, or with ``tune`` the one ONNX Runtime measures fastest
    (``planning.forms``)."""

    kind: str = "time"
    min_flop_reduction: float = 2.0
    min_speedup: float = 1.1
    forms: tuple[str, ...] = DEFAULT_FORMS
    tune: bool = False
    batches: tuple[int, ...] = ()

    def __post_init__(self):
        _one_of("gate", self.kind, GATES)
        _at_least("--min-flop-reduction", self.min_flop_reduction, 0, strict=True)
        _at_least("--min-speedup", self.min_speedup, 0, strict=True)
        object.__setattr__(self, "forms", tuple(self.forms))
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))
        if not self.forms:
            raise UnsupportedConstructError("forms: name at least one rewrite form")
        for form in self.forms:
            _one_of("form", form, FORMS)
        if any(b < 1 for b in self.batches):
            raise UnsupportedConstructError(f"batch sizes must be at least 1, got {list(self.batches)}")

    @classmethod
    def of(cls, value: Union[str, "GateConfig"]) -> "GateConfig":
        return value if isinstance(value, cls) else cls(kind=value)


@dataclass(frozen=True)
class Tolerance:
    """Exact mode: every element ``|new - old| <= atol + rtol * |old|`` (NaN equals NaN). Lossy mode
    (``rel_l2`` set): per output ``||new - old||_2 / ||old||_2 <= rel_l2``. The defaults hold float32
    reassociation over 4096-long sums (measured up to 8.7e-5 absolute) with margin."""

    rtol: float = 1e-3
    atol: float = 1e-4
    rel_l2: Optional[float] = None

    def __post_init__(self):
        _at_least("--rtol", self.rtol, 0)
        _at_least("--atol", self.atol, 0)
        if self.rel_l2 is not None:
            _at_least("--tolerance", self.rel_l2, 0)

    def describe(self) -> str:
        if self.rel_l2 is not None:
            return f"relative L2 <= {self.rel_l2:g}"
        return f"rtol={self.rtol:g} atol={self.atol:g}"


@dataclass(frozen=True, eq=False)
class ValidationConfig:
    """How the rewritten model is proved against the original in ONNX Runtime: on ``inputs`` (arrays keyed by
    input name; others ignored) if given, else on ``check`` random input sets drawn from ``seed`` (0 skips,
    noted). ``tolerance`` None takes the support's default (``planning.support``)."""

    check: int = 3
    seed: int = 0
    tolerance: Optional[Tolerance] = None
    inputs: Optional[Mapping[str, np.ndarray]] = None

    def __post_init__(self):
        _at_least("--check", self.check, 0)
        _at_least("--seed", self.seed, 0)


@dataclass(frozen=True)
class AnalysisConfig:
    """The statistical criterion (``stats.analyze``): null rules ``[GLOB=]SPEC``, Benjamini-Hochberg level
    ``fdr`` per tensor or pooled over the model, an optional reference model with the initial tensors, and
    whether chains' grouped edges are decided too."""

    nulls: tuple[str, ...] = ()
    fdr: float = 0.05
    fdr_scope: str = "tensor"
    init_reference: Optional[Union[str, os.PathLike]] = None
    edges: str = "entries"

    def __post_init__(self):
        if not 0 < self.fdr < 1:
            raise UnsupportedConstructError(f"--fdr must be in (0, 1), got {self.fdr}")
        _one_of("fdr_scope", self.fdr_scope, FDR_SCOPES)
        _one_of("edges", self.edges, EDGE_MODES)
        object.__setattr__(self, "nulls", tuple(self.nulls))
        if self.init_reference is not None:
            object.__setattr__(self, "init_reference", Path(self.init_reference))


METRICS = ("rel-l2", "max-abs", "top1", "accuracy", "cosine")


@dataclass(frozen=True)
class BlockSettings:
    """The block families (single layers, chains, attention head groups): ``blocks`` tries that one block count
    only (None: the ladder ``k = 2, 4, 8, ...`` up to ``max_blocks``); blocks of equal size when ``balanced``."""

    blocks: Optional[int] = None
    balanced: bool = True
    max_blocks: int = 64

    def __post_init__(self):
        if self.blocks is not None and self.blocks < 2:
            raise UnsupportedConstructError(f"--blocks must be at least 2, got {self.blocks}")
        if self.max_blocks < 2:
            raise UnsupportedConstructError(f"the largest block count must be at least 2, got {self.max_blocks}")


@dataclass(frozen=True)
class SquareSettings:
    """The square family (the directed view): ``nodes`` whose input and output share one index space, besides
    the residual maps it finds itself."""

    nodes: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))


@dataclass(frozen=True)
class AnnealConfig:
    """Structural annealing (``search``), core settings: the fidelity ``metric`` against the original model on
    its ``outputs`` (None: every float output) and one global ``tolerance`` on it (lower is better); ridge ``refit`` of every cut (strength ``ridge`` relative
    to the mean input energy; None: cross-validated per block, ``search.refit``); the ``held_out`` fraction of
    the calibration samples; samples per ONNX Runtime batch; activation rows kept per layer for the refit;
    bootstrap resamples for the stability check; random input sets used when no calibration data is given;
    ``blas_threads``: the threads numpy's BLAS may use meanwhile (None: leave it alone; default 1, because idle
    BLAS threads spin and fight ONNX Runtime's between the runs: tools/bench_anneal_large.py at 4 x 1024 took
    233 s with OpenBLAS's default 2 threads, 21 s with 1). ``search_samples``: the most tuning samples per fold
    the search runs (None: all; every candidate runs both folds once, so this bounds a step's cost; the
    report's fidelity is measured on every held-out sample). ``quantize``: a quantization scheme
    (``runtime.quantize.SCHEMES``) applied last, inside the same budget. ``families``: the structure families searched (names registered in ``search.families``; None: all); per
    family settings: ``block`` (``BlockSettings``) and ``square`` (``SquareSettings``)."""

    metric: str = "rel-l2"
    tolerance: float = 0.01
    refit: bool = True
    held_out: float = 0.5
    batch_size: int = 256
    max_rows: int = 4096
    ridge: Optional[float] = None
    bootstrap: int = 5
    random_sets: int = 8
    blas_threads: Optional[int] = 1
    seed: int = 0
    search_samples: Optional[int] = 64
    outputs: Optional[tuple[str, ...]] = None
    quantize: Optional[str] = None
    families: Optional[tuple[str, ...]] = None
    block: BlockSettings = BlockSettings()
    square: SquareSettings = SquareSettings()

    def __post_init__(self):
        _one_of("metric", self.metric, METRICS)
        for name in ("families", "outputs"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        checks = [(self.families is None or bool(self.families), "families: name at least one structure family"),(self.tolerance >= 0, f"--tolerance must be >= 0, got {self.tolerance}"),
                  (0 < self.held_out < 1, f"--held-out must be in (0, 1), got {self.held_out}"),
                  (self.batch_size >= 1 and self.max_rows >= 1, "batch size and rows kept must be at least 1"),
                  ((self.ridge or 0) >= 0 and self.bootstrap >= 0, "ridge and bootstrap count must be >= 0"),
                  (self.random_sets >= 2, f"random input sets must be at least 2, got {self.random_sets}"),
                  (self.search_samples is None or self.search_samples >= 1,
                   f"--search-samples must be at least 1, got {self.search_samples}"),
                  (self.blas_threads is None or self.blas_threads >= 1, "BLAS threads must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise UnsupportedConstructError(message)


@dataclass(frozen=True)
class ClusterConfig:
    """Annealing spread over Ray (``distributed``, extra ``ray``): ``workers`` fold workers, on a local Ray
    instance started for the run (loopback only) or, with ``address``, on the existing cluster there (then 2
    workers unless ``workers`` says otherwise); each worker's ONNX Runtime session runs ``threads`` intra-op
    threads."""

    workers: Optional[int] = None
    address: Optional[str] = None
    threads: int = 1

    def __post_init__(self):
        if self.workers is not None:
            _at_least("--workers", self.workers, 1)
        _at_least("worker threads", self.threads, 1)

    @property
    def size(self) -> int:
        """The number of fold workers."""
        return self.workers or 2
