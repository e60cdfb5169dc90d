"""The annealing schedule with its two tuning folds on Ray workers.

Rules:
- What the schedule (``search.schedule``) does per fold runs on a fold worker: fold ``f`` on worker
  ``f mod workers``. Measuring a candidate is, per fold, the refit of its cuts in topological order on that
  fold's activations (``refit_in_order``; or the plain cut the driver made) and the run of the *other* fold
  under those weights; the two folds run at once and the driver joins their outputs into the crossed
  fidelity (``FidelityGate.compare``). Everything else (the units, the queue, acceptances, the final refit,
  the held-out measures) stays in the driver, so the decisions, the steps and the written model are those
  of the single-process run: the workers compute the same numbers (the same code on the same arrays; ONNX
  Runtime's CPU kernels and one-thread BLAS give the same bits at any thread count, checked in the tests).
- A worker holds, per fold, the state it last computed: the network (loaded from the model's path), the
  original's activations, and the activations with the state's weights in force. Every call carries the
  job (model path, shapes, session, calibration data: one Ray object) and the state (its version and the
  fold's weights: one Ray object per version), and a worker whose state is older (or that was just
  restarted and holds nothing) computes it first. A killed worker's call, retried on its restarted
  incarnation, thus returns what it would have: nothing is lost but time.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

from onnx_decomp.config import AnnealConfig, SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.distributed.cluster import Cluster, gather
from onnx_decomp.errors import DecompError
from onnx_decomp.io.shapes import InputShapes
from onnx_decomp.search.calibration import Calibration
from onnx_decomp.search.families import Cut, Structure
from onnx_decomp.search.network import Network, Stored
from onnx_decomp.search.refit import Refitter
from onnx_decomp.search.schedule import Annealer, Fits, refit_in_order
from onnx_decomp_passes import Site


@dataclass(frozen=True)
class FoldJob:
    """What a fold worker computes on: the model by path, the run's settings and its data (``original``:
    the paired original data of ``FidelityGate``)."""

    path: str
    input_shapes: InputShapes
    inline_functions: bool
    session: SessionConfig
    config: AnnealConfig
    data: Calibration
    original: Optional[Calibration] = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex)


class _Side:
    """One fold of one job in a worker: its network, batches, the original's activations, and the state."""

    def __init__(self, job: FoldJob, fold: int, threads: int):
        ctx = ModelContext.load(job.path, job.input_shapes, job.inline_functions)
        self.network = Network(ctx, replace(job.session, threads=threads), job.config.max_rows, job.config.seed)
        source = job.original or job.data
        self.batches = job.data.batches(job.data.folds[fold])
        self.other = job.data.batches(job.data.folds[1 - fold])
        self.dense = self.network.run(source.batches(source.folds[fold]), taps=True).taps
        self.refitter = Refitter(job.config.ridge, job.config.seed)
        self.version, self.fits, self.taps = None, {}, None

    def at(self, version: int, fits: dict[Site, Stored], refit: bool) -> None:
        """Bring the state to ``version`` (module rule)."""
        if self.version != version:
            self.fits = fits
            self.taps = self.network.run(self.batches, fits, taps=True).taps if refit else None
            self.version = version


class FoldWorker:
    """A Ray actor's body (module rules); ``threads``: ONNX Runtime's intra-op threads."""

    def __init__(self, threads: int = 1):
        self.threads = threads
        self.sides: dict[tuple[str, int], _Side] = {}
        self._blas = threadpool_limits(1, user_api="blas")  # as the driver's search: the same bits

    def _side(self, job: FoldJob, fold: int, version: int, fits: dict[Site, Stored]) -> _Side:
        if (job.key, fold) not in self.sides:
            self.sides = {key: side for key, side in self.sides.items() if key[0] == job.key}
            self.sides[(job.key, fold)] = _Side(job, fold, self.threads)
        side = self.sides[(job.key, fold)]
        side.at(version, fits, job.config.refit)
        return side

    def evaluate(self, job: FoldJob, fold: int, version: int, fits: dict[Site, Stored], cuts: dict[Site, Cut],
                 plain: Optional[dict[Site, Stored]] = None) -> tuple[Optional[dict], list[np.ndarray]]:
        """The fold's weights for ``cuts`` on the state (refitted; or ``plain``) and the other fold's outputs
        under them; the weights of ``cuts``' sites only (None when ``plain``)."""
        side = self._side(job, fold, version, fits)
        if plain is None:
            weights = refit_in_order(side.network, side.refitter, cuts, side.fits, side.dense, side.taps,
                                     lambda w: side.network.run(side.batches, w, taps=True).taps)
        else:
            weights = {**side.fits, **plain}
        outputs = side.network.run(side.other, weights).outputs
        return (None if plain is not None else {site: weights[site] for site in cuts}), outputs

    def taps(self, job: FoldJob, fold: int, version: int, fits: dict[Site, Stored]) -> dict:
        """The fold's activations with the state in force."""
        return self._side(job, fold, version, fits).taps

    def pid(self) -> int:
        return os.getpid()


class RayAnnealer(Annealer):
    """``search.schedule.Annealer`` with each fold's refits and runs on a Ray fold worker (module rules)."""

    def __init__(self, *args, workers: list, job: FoldJob, ray_module):
        super().__init__(*args)
        self.workers, self.ray = workers, ray_module
        self.job = ray_module.put(job)
        self._states: tuple[int, list] = (-1, [])
        self.calls = 0  # evaluations sent (one per fold)

    def _worker(self, fold: int):
        return self.workers[fold % len(self.workers)]

    def _state_refs(self) -> list:
        """One Ray object per fold holding the state's weights (put once per state version)."""
        if self._states[0] != self.state.version:
            self._states = (self.state.version, [self.ray.put(fits) for fits in self.state.fits])
        return self._states[1]

    def _remote(self, structure: Structure) -> tuple[Fits, list]:
        """Both folds evaluated at once: the fits and, per fold, the outputs of the other fold under them."""
        plain = None if self.config.refit else self.plain(structure.cuts)
        states = self._state_refs()
        futures = [self._worker(fold).evaluate.remote(self.job, fold, self.state.version, states[fold],
                                                      structure.cuts, plain) for fold in (0, 1)]
        self.calls += 2
        results = gather(futures)
        fits = tuple({**self.state.fits[fold], **(plain if plain is not None else results[fold][0])}
                     for fold in (0, 1))
        return fits, [results[1][1], results[0][1]]  # fold 0 under fold 1's fit, fold 1 under fold 0's

    def _apply(self, structure: Structure) -> Fits:
        return self._remote(structure)[0]

    def _evaluate(self, structure: Structure) -> tuple[Fits, float]:
        fits, outputs = self._remote(structure)
        return fits, self.gate.compare([np.concatenate(o) for o in zip(*outputs)])

    def _retap(self) -> None:
        """Nothing here: each worker computes the new state's activations on its next call."""

    def final_refit(self, cuts: dict[Site, Cut]) -> dict[Site, Stored]:
        if self.config.refit and self.state.version > 0:
            states = self._state_refs()
            self.taps = gather([self._worker(fold).taps.remote(self.job, fold, self.state.version, states[fold])
                                for fold in (0, 1)])
        return super().final_refit(cuts)


def fold_annealer(cluster: Cluster, ctx: ModelContext, input_shapes: InputShapes, inline_functions: bool,
                  session: SessionConfig, config: AnnealConfig, data: Calibration,
                  original: Optional[Calibration] = None):
    """What ``drivers.anneal.search`` makes its annealer with: a ``RayAnnealer`` on the cluster's fold workers."""
    if ctx.source is None:
        raise DecompError("the Ray backend reads the model by path: give a model file, not a ModelProto")
    job = FoldJob(str(ctx.source.resolve()), input_shapes, inline_functions, session, config, data, original)
    return functools.partial(RayAnnealer, workers=cluster.fold_workers, job=job, ray_module=cluster.ray)
