"""What ``onnx-decomp bench`` measured: per batch size and model, times, speedup, FLOP reduction and
efficiency; a console table, JSON, and a PNG of speedup against FLOP reduction.

JSON fields: ``dense`` and ``decomposed`` (paths), ``onnxruntime`` (version), ``provider`` (where the sessions
really ran), ``intra_op_threads`` (null: ONNX Runtime's default), ``spin`` (idle intra-op threads spin),
``cpu_count``, ``peers`` (quantization schemes, e.g. ["int8", "int4"]), ``clock`` ("wall", or "cpu": the
timing thread's CPU time), ``rounds`` (interleaved rounds per batch size), ``inputs`` ("random", or the
arrays' file), ``shapes`` (batch size -> input name -> the shape timed), ``results[]``: ``batch``, ``model``
(dense, dense+<scheme>, decomposed, decomposed+<scheme>), ``samples_ms`` (milliseconds per run, one per round, rounds aligned across
models), ``median_ms``, ``speedup`` (median over rounds of the dense sample / this model's sample),
``matmul_flops`` (MatMul/Gemm/Conv FLOPs per inference of the float model; a quantized peer counts its float
source's),
``flop_reduction`` (dense FLOPs / these; null where that is no finite number: no FLOPs left, or none in
either), ``efficiency`` (speedup / flop_reduction, or null). The table prints "n/a" for those nulls.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import numpy as np

from onnx_decomp.io.atomic import staged_output, write_json
from onnx_decomp.report.figures import plot_speedup_against_flops
from onnx_decomp.report.table import table


def _figure(value: float) -> str:
    """A ratio as printed: two decimals, or n/a where it is no finite number."""
    return f"{value:.2f}" if np.isfinite(value) else "n/a"


@dataclass(frozen=True)
class BenchResult:
    batch: int
    model: str
    samples_ms: list[float]
    speedup: float
    matmul_flops: int
    flop_reduction: float

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def efficiency(self) -> float:
        """Speedup / FLOP reduction; NaN (null in JSON) where the reduction is no finite figure."""
        return self.speedup / self.flop_reduction if np.isfinite(self.flop_reduction) else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "median_ms": self.median_ms, "efficiency": self.efficiency}


@dataclass
class BenchReport:
    dense: str
    decomposed: str
    onnxruntime: str
    provider: str
    intra_op_threads: Optional[int]
    spin: bool
    cpu_count: int
    peers: list[str]
    clock: str
    rounds: int
    results: list[BenchResult] = field(default_factory=list)
    inputs: str = "random"
    shapes: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "results"}
        return {**data, "results": [r.to_dict() for r in self.results]}

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_json(path, self.to_dict())

    def plot(self, path: Union[str, os.PathLike]) -> None:
        with staged_output(path) as staged:
            plot_speedup_against_flops(self.results, staged,
                                       f"{self.provider}, {self.intra_op_threads or 'default'} threads")

    def format(self) -> str:
        threads = self.intra_op_threads if self.intra_op_threads is not None else f"default ({self.cpu_count} cores)"
        rows = [("batch", "model", "median ms", "speedup", "FLOPs /", "efficiency")]
        rows += [(r.batch, r.model, f"{r.median_ms:.4g}", f"{r.speedup:.2f}x", _figure(r.flop_reduction),
                  _figure(r.efficiency)) for r in self.results]
        spin = ("" if self.spin else " (not spinning)") + (", CPU time" if self.clock == "cpu" else "")
        shapes = [f"batch {batch}: " + ", ".join(f"{name} {shape}" for name, shape in inputs.items())
                  for batch, inputs in self.shapes.items()]
        return "\n".join([f"ONNX Runtime {self.onnxruntime} on {self.provider}, intra-op threads {threads}{spin}; "
                          f"median of {self.rounds} interleaved rounds per batch size",
                          f"inputs ({self.inputs}): " + "; ".join(shapes),
                          table(rows),
                          "speedup: dense time / model time; FLOPs /: dense MatMul FLOPs / the model's; "
                          "efficiency: speedup / FLOPs /"])
