"""The bench driver: a dense model against its decomposition (and both quantized to int8) in one process.

Rule: every model gets one ONNX Runtime session on the same provider and thread count; per batch size
(the first dim of every input whose first dim is symbolic in the dense model) the models run on the same
random inputs, after a warm-up run each, in interleaved rounds whose order rotates (``cost.timing``). The
speedup of a model is the median over rounds of the dense time / its time in that round; its FLOP
reduction is the dense model's MatMul/Gemm FLOPs over its own (an int8 peer's are its float source's),
counted by shape inference at that batch size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from onnx_decomp.config import SessionConfig
from onnx_decomp.cost.model_stats import model_stats
from onnx_decomp.cost.timing import CLOCKS, interleaved_times
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.model_io import ModelLike, load_model, model_label
from onnx_decomp.io.shapes import InputSpec, batched_inputs, concrete_shapes, input_specs
from onnx_decomp.report.bench import BenchReport, BenchResult
from onnx_decomp.runtime.quantize import quantize_int8
from onnx_decomp.runtime.sessions import make_session, onnxruntime, random_inputs, session_device

PEERS = ("int8",)
BUDGET_S, MAX_ROUNDS, MIN_ROUNDS = 2.0, 200, 7

logger = logging.getLogger(__name__)


def _interface(model: onnx.ModelProto) -> tuple:
    return ([i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}],
            [o.name for o in model.graph.output])


def _batch_specs(model: onnx.ModelProto, batch: int) -> list[InputSpec]:
    """The inputs at ``batch`` (symbolic first dims; other symbolic dims 1); an error when none is symbolic
    and ``batch`` differs from the model's."""
    specs, symbolic = input_specs(model), batched_inputs(model)
    if not symbolic and any(s.shape and s.shape[0] != batch for s in specs):
        raise UnsupportedConstructError(f"--batch {batch}: the model's inputs have a fixed first dim")
    return [replace(s, shape=(batch, *s.shape[1:])) if s.name in symbolic else s for s in specs]


def _reduction(dense_flops: int, model_flops: int) -> float:
    """Dense FLOPs / the model's: inf when the model has none left, NaN (no figure; null in JSON) when
    neither has any."""
    if model_flops:
        return dense_flops / model_flops
    return float("inf") if dense_flops else float("nan")


def _check_clock(clock: str, session: SessionConfig) -> None:
    if clock not in CLOCKS:
        raise UnsupportedConstructError(f"--clock must be one of {tuple(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (session.threads != 1 or session.provider != "cpu"):
        raise UnsupportedConstructError("--clock cpu counts the calling thread's CPU time: it needs --threads 1 "
                                        "and --provider cpu")


def bench(dense: ModelLike, decomposed: ModelLike, batches: Sequence[int], session: SessionConfig = SessionConfig(),
          peer: Optional[str] = None, budget_s: float = BUDGET_S, max_rounds: int = MAX_ROUNDS,
          min_rounds: int = MIN_ROUNDS, seed: int = 0, clock: str = "wall") -> BenchReport:
    """Time the models of the module rule; ``peer="int8"`` adds both models quantized by ONNX Runtime;
    ``clock="cpu"`` counts CPU time (``cost.timing.interleaved_times``) and needs one intra-op thread."""
    if peer is not None and peer not in PEERS:
        raise UnsupportedConstructError(f"--peer must be one of {PEERS}, got {peer!r}")
    _check_clock(clock, session)
    floats = {"dense": load_model(dense), "decomposed": load_model(decomposed)}
    if _interface(floats["dense"]) != _interface(floats["decomposed"]):
        raise UnsupportedConstructError("the two models have different inputs or outputs: "
                                        f"{_interface(floats['dense'])} vs {_interface(floats['decomposed'])}")
    models, sources = {"dense": floats["dense"]}, {}
    if peer == "int8":
        models["dense+int8"], sources["dense+int8"] = quantize_int8(floats["dense"]), "dense"
    models["decomposed"] = floats["decomposed"]
    if peer == "int8":
        models["decomposed+int8"], sources["decomposed+int8"] = quantize_int8(floats["decomposed"]), "decomposed"
    report = bench_models(models, batches, session, budget_s, max_rounds, min_rounds, seed, clock, sources)
    report.dense, report.decomposed, report.peer = model_label(dense), model_label(decomposed), peer
    return report


def bench_models(models: Mapping[str, onnx.ModelProto], batches: Sequence[int],
                 session: SessionConfig = SessionConfig(), budget_s: float = BUDGET_S, max_rounds: int = MAX_ROUNDS,
                 min_rounds: int = MIN_ROUNDS, seed: int = 0, clock: str = "wall",
                 flop_sources: Optional[Mapping[str, str]] = None) -> BenchReport:
    """Time any number of models with the same inputs and outputs against the first (the module rule, the
    first model in the place of the dense one); a model named in ``flop_sources`` counts the FLOPs of the
    model named there (a quantized model, its float source's)."""
    _check_clock(clock, session)
    ort = onnxruntime()
    names = list(models)
    for name in names[1:]:
        if _interface(models[name]) != _interface(models[names[0]]):
            raise UnsupportedConstructError(f"{name} has other inputs or outputs than {names[0]}: "
                                            f"{_interface(models[name])} vs {_interface(models[names[0]])}")
    sources = {name: (flop_sources or {}).get(name, name) for name in names}
    sessions = [make_session(model, session) for model in models.values()]
    report = BenchReport(names[0], ", ".join(names[1:]), ort.__version__, session_device(sessions[0]),
                         session.threads, session.spin, os.cpu_count() or 1, None, clock, 0)
    rng = np.random.default_rng(seed)
    for batch in tqdm(batches, desc="bench", unit="batch size", disable=None, leave=False):
        specs = _batch_specs(models[names[0]], batch)
        flops = {name: model_stats(models[name], concrete_shapes(models[name], specs, data_prop=True)).matmul_flops
                 for name in set(sources.values())}
        times = interleaved_times(sessions, random_inputs(specs, rng), budget_s, max_rounds, min_rounds, clock)
        report.rounds = max(report.rounds, len(times))
        for i, name in enumerate(names):
            model_flops, dense_flops = flops[sources[name]], flops[sources[names[0]]]
            report.results.append(BenchResult(
                batch, name, [float(t) for t in times[:, i] * 1e3], float(np.median(times[:, 0] / times[:, i])),
                model_flops, _reduction(dense_flops, model_flops)))
        logger.info("batch %d: %d rounds", batch, len(times))
    return report
