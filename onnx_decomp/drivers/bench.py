"""The bench driver: a dense model against its decomposition (and both quantized) in one process.

Rule: every model gets one ONNX Runtime session on the same provider and thread count; per batch size the
models run on the same inputs, after a warm-up run each, in interleaved rounds whose order rotates
(``cost.timing``). The inputs of a batch size: random at ``input_shapes`` (other symbolic dims 1), or the
arrays of ``inputs`` (real data keyed by input name); either way the batch is the first dim of every input
whose first dim is symbolic (the first ``batch`` rows of an array; default batch sizes 1 and 64, or 1 and
the rows given). Every model runs once on them first (a one-line error where one cannot). The speedup of a
model is the median over rounds of the dense time / its time in that round; its FLOP reduction is the dense
model's FLOPs over its own (a quantized peer's are its float source's), counted at those inputs
(``cost.model_stats.counted_shapes``). Peers: each model also quantized by each scheme of ``peers``
(``runtime.quantize``; ``int8-static`` calibrated on ``calib``), named ``<model>+<scheme>``.
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
from onnx_decomp.cost.model_stats import stats_at
from onnx_decomp.cost.timing import CLOCKS, interleaved_times
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.model_io import ModelLike, load_model, model_label
from onnx_decomp.io.shapes import InputShapes, InputSpec, batched_inputs, input_specs
from onnx_decomp.report.bench import BenchReport, BenchResult
from onnx_decomp.runtime.quantize import SCHEMES, quantize
from onnx_decomp.runtime.sessions import make_session, onnxruntime, random_inputs, run_session, session_device

Arrays = Mapping[str, np.ndarray]

PEERS = SCHEMES
DEFAULT_BATCHES = (1, 64)
BUDGET_S, MAX_ROUNDS, MIN_ROUNDS = 2.0, 200, 7

logger = logging.getLogger(__name__)


def _interface(model: onnx.ModelProto) -> tuple:
    return ([i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}],
            [o.name for o in model.graph.output])


def _batch_specs(model: onnx.ModelProto, batch: int, input_shapes: InputShapes = None) -> list[InputSpec]:
    """The inputs at ``input_shapes`` and ``batch`` (module rule); an error when no first dim is symbolic and
    ``batch`` differs from the model's."""
    specs, symbolic = input_specs(model, input_shapes), batched_inputs(model)
    if not symbolic and any(s.shape and s.shape[0] != batch for s in specs):
        raise UnsupportedConstructError(f"--batch {batch}: the model's inputs have a fixed first dim")
    return [replace(s, shape=(batch, *s.shape[1:])) if s.name in symbolic else s for s in specs]


def _given_rows(model: onnx.ModelProto, inputs: Arrays) -> int:
    """The rows ``inputs`` give every batched input of ``model``; an error naming an input they lack."""
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise UnsupportedConstructError(f"--inputs lacks the model's inputs {missing} (it has {sorted(inputs)})")
    return min((len(inputs[name]) if inputs[name].ndim else 0 for name in batched_inputs(model)), default=0)


def _feeds(model: onnx.ModelProto, batch: int, input_shapes: InputShapes, inputs: Optional[Arrays],
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The inputs of one batch size (module rule)."""
    specs = _batch_specs(model, batch, input_shapes)
    if inputs is None:
        return random_inputs(specs, rng)
    rows, batched = _given_rows(model, inputs), batched_inputs(model)
    if batched and rows < batch:
        raise UnsupportedConstructError(f"--batch {batch}: --inputs holds {rows} rows")
    return {s.name: inputs[s.name][:batch] if s.name in batched else inputs[s.name] for s in specs}


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


def bench(dense: ModelLike, decomposed: ModelLike, batches: Optional[Sequence[int]] = None,
          session: SessionConfig = SessionConfig(), peers: Sequence[str] = (), calib: Optional[Arrays] = None,
          budget_s: float = BUDGET_S, max_rounds: int = MAX_ROUNDS, min_rounds: int = MIN_ROUNDS, seed: int = 0,
          clock: str = "wall", input_shapes: InputShapes = None, inputs: Optional[Arrays] = None) -> BenchReport:
    """Time the models of the module rule: the two, and each quantized by every scheme of ``peers``;
    ``clock="cpu"`` counts CPU time (``cost.timing.interleaved_times``) and needs one intra-op thread."""
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise UnsupportedConstructError(f"--peer must name schemes of {','.join(PEERS)}, got {unknown}")
    if "int8-static" in peers and calib is None:
        raise UnsupportedConstructError("--peer int8-static needs calibration inputs: --calib data.npz")
    _check_clock(clock, session)
    floats = {"dense": load_model(dense), "decomposed": load_model(decomposed)}
    if _interface(floats["dense"]) != _interface(floats["decomposed"]):
        raise UnsupportedConstructError("the two models have different inputs or outputs: "
                                        f"{_interface(floats['dense'])} vs {_interface(floats['decomposed'])}")
    models, sources = {}, {}
    for name, model in floats.items():
        models[name] = model
        for peer in peers:
            models[f"{name}+{peer}"], sources[f"{name}+{peer}"] = quantize(model, peer, calib), name
    report = bench_models(models, batches, session, budget_s, max_rounds, min_rounds, seed, clock, sources,
                          input_shapes=input_shapes, inputs=inputs)
    report.dense, report.decomposed, report.peers = model_label(dense), model_label(decomposed), list(peers)
    return report


def bench_models(models: Mapping[str, onnx.ModelProto], batches: Optional[Sequence[int]] = None,
                 session: SessionConfig = SessionConfig(), budget_s: float = BUDGET_S, max_rounds: int = MAX_ROUNDS,
                 min_rounds: int = MIN_ROUNDS, seed: int = 0, clock: str = "wall",
                 flop_sources: Optional[Mapping[str, str]] = None, *, input_shapes: InputShapes = None,
                 inputs: Optional[Arrays] = None) -> BenchReport:
    """Time any number of models with the same inputs and outputs against the first (the module rule, the
    first model in the place of the dense one) at ``input_shapes`` or on ``inputs``; a model named in
    ``flop_sources`` counts the FLOPs of the model named there (a quantized model, its float source's)."""
    _check_clock(clock, session)
    if inputs is not None and input_shapes:
        raise UnsupportedConstructError("give --inputs or --input-shape, not both: the arrays have their shapes")
    ort = onnxruntime()
    names = list(models)
    first = models[names[0]]
    for name in names[1:]:
        if _interface(models[name]) != _interface(first):
            raise UnsupportedConstructError(f"{name} has other inputs or outputs than {names[0]}: "
                                            f"{_interface(models[name])} vs {_interface(first)}")
    if not batches:
        batches = DEFAULT_BATCHES if inputs is None else tuple(dict.fromkeys((1, _given_rows(first, inputs) or 1)))
    sources = {name: (flop_sources or {}).get(name, name) for name in names}
    sessions = [make_session(model, session) for model in models.values()]
    report = BenchReport(names[0], ", ".join(names[1:]), ort.__version__, session_device(sessions[0]),
                         session.threads, session.spin, os.cpu_count() or 1, [], clock, 0,
                         inputs="random" if inputs is None else "given")
    rng = np.random.default_rng(seed)
    for batch in tqdm(batches, desc="bench", unit="batch size", disable=None, leave=False):
        feeds = _feeds(first, batch, input_shapes, inputs, rng)
        for name, one in zip(names, sessions):
            run_session(one, feeds, what=f"the inputs of batch {batch} ({name})")
        specs = [InputSpec(name, array.dtype, array.shape) for name, array in feeds.items()]
        flops = {name: stats_at(models[name], specs, feeds).matmul_flops
                 for name in set(sources.values())}
        times = interleaved_times(sessions, feeds, budget_s, max_rounds, min_rounds, clock)
        report.rounds = max(report.rounds, len(times))
        report.shapes[str(batch)] = {name: list(array.shape) for name, array in feeds.items()}
        for i, name in enumerate(names):
            model_flops, dense_flops = flops[sources[name]], flops[sources[names[0]]]
            report.results.append(BenchResult(
                batch, name, [float(t) for t in times[:, i] * 1e3], float(np.median(times[:, 0] / times[:, i])),
                model_flops, _reduction(dense_flops, model_flops)))
        logger.info("batch %d: %d rounds", batch, len(times))
    return report
