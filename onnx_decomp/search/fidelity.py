"""The fidelity gate: how far a candidate's outputs are from the original model's on calibration data, in
ONNX Runtime.

Metrics (lower is better; over every float output, or those named (``--output``), the worst one counts; a
row is one vector of the last axis, every leading index flattened):
- ``rel-l2``: ``||candidate - original||_2 / ||original||_2`` over all samples.
- ``max-abs``: the largest absolute difference.
- ``top1``: the fraction of rows whose argmax differs from the original's.
- ``cosine``: ``1 - mean cosine similarity`` of the candidate's rows with the original's (embeddings).
- ``accuracy``: the accuracy drop against the labels, ``acc(original) - acc(candidate)``, where ``acc`` is
  the fraction of rows whose argmax equals the label; outputs that have labels only.
One global tolerance: a state passes when its metric is at most the tolerance. The original model's
outputs, and its activations at every layer (for the refit), are computed once per run, fold by fold.

Cross-fitting: the schedule refits every cut twice, once on each tuning fold's activations, and
``measure_crossed`` runs each fold with the weights fitted on the other one: the fidelity the gate decides
on is measured on samples the refit did not see, so a refit that fits the tuning samples' noise does not
pass for a structure that generalises (on digits, in-sample top-1 disagreement read 0.4% where held-out
samples gave 0.9-2.7%).

Paired data (block by block, ``drivers.by_block``): with ``original`` given (the original model's inputs to
this network, sample by sample the same samples as ``data``, e.g. the original stream where ``data`` is the
already-compressed one), the reference outputs and the activations refits aim at (``fold_taps``) are the
network's on ``original``, and the schedule starts from its activations on ``data`` (``start_taps``).
"""

from __future__ import annotations

import logging
from itertools import compress
from typing import Optional, Sequence

import numpy as np
import onnx

from onnx_decomp.config import SessionConfig
from onnx_decomp.errors import DecompError
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp.search.calibration import Calibration, Samples
from onnx_decomp.search.data_checks import check_measurable
from onnx_decomp.search.network import Network, Weights
from onnx_decomp_passes import Site

logger = logging.getLogger(__name__)

TINY = np.finfo(np.float64).tiny


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)


def output_fidelity(metric: str, original: np.ndarray, candidate: np.ndarray,
                    labels: Optional[np.ndarray] = None) -> float:
    """One output's metric (module rule)."""
    if original.shape != candidate.shape:
        return float("inf")
    if metric == "rel-l2":  # in float64, in place: two output-sized arrays at a time
        gap = candidate.astype(np.float64)
        gap -= original
        return float(np.linalg.norm(gap) / max(np.linalg.norm(original.astype(np.float64)), TINY))
    e, a = original.astype(np.float64), candidate.astype(np.float64)
    if metric == "max-abs":
        return float(np.abs(a - e).max(initial=0.0))
    if metric == "top1":
        return float(np.mean(_rows(e).argmax(1) != _rows(a).argmax(1)))
    if metric == "cosine":
        e, a = _rows(e), _rows(a)
        norms = np.linalg.norm(e, axis=1) * np.linalg.norm(a, axis=1)
        same = np.where(norms > 0, np.einsum("ij,ij->i", e, a) / np.maximum(norms, TINY),
                        np.all(e == a, axis=1).astype(np.float64))  # a zero row: the same zero row or nothing
        return float(1.0 - same.mean()) if len(same) else 0.0
    truth = np.asarray(labels).reshape(-1)
    return float(np.mean(_rows(e).argmax(1) == truth) - np.mean(_rows(a).argmax(1) == truth))


def fidelity(metric: str, original: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
             labels: Sequence[Optional[np.ndarray]]) -> float:
    """The worst output's metric over the float outputs (those with labels for ``accuracy``)."""
    values = [output_fidelity(metric, e, a, y) for e, a, y in zip(original, candidate, labels)
              if np.issubdtype(e.dtype, np.floating) and (metric != "accuracy" or y is not None)]
    return max(values, default=0.0)


def exact_difference(original: Sequence[np.ndarray], candidate: Sequence[np.ndarray], rtol: float,
                     atol: float) -> tuple[float, bool]:
    """The largest absolute difference over all outputs, and whether every element satisfies
    ``|candidate - original| <= atol + rtol * |original|``."""
    worst, ok = 0.0, True
    for e, a in zip(original, candidate):
        if e.shape != a.shape:
            return float("inf"), False
        gap = a.astype(np.float64)  # in float64, in place: two output-sized arrays at a time
        gap -= e
        np.abs(gap, out=gap)
        worst = max(worst, float(gap.max(initial=0.0)))
        allowed = np.abs(e, dtype=np.float64)
        allowed *= rtol
        allowed += atol
        ok = ok and bool(np.all(gap <= allowed))
    return worst, ok


class FidelityGate:
    """The metric of any state of the network's weights against the original model (module rules), on
    the tuning samples (what the schedule decides on) or the held-out ones (what the report gives)."""

    def __init__(self, network: Network, data: Calibration, metric: str, tolerance: float,
                 outputs: Optional[Sequence[str]] = None, original: Optional[Calibration] = None):
        self.network, self.data, self.metric, self.tolerance = network, data, metric, tolerance
        unknown = sorted(set(outputs or ()) - set(network.outputs))
        if unknown:
            raise DecompError(f"--output {unknown[0]!r} names no output of the model (outputs {network.outputs})")
        self.measured = [outputs is None or name in outputs for name in network.outputs]
        self.folds = [data.batches(fold) for fold in data.folds]
        self.batches = {"tuning": self.folds[0] + self.folds[1], "held-out": data.batches(data.held_out)}
        self.labels = {"tuning": self._labels(data.tuning, "tuning"),
                       "held-out": self._labels(data.held_out, "validation")}
        source = original or data
        dense = [network.run(source.batches(fold), taps=True) for fold in source.folds]
        self.dense_taps = self.joined([run.taps for run in dense])  # the original's activations, tuning part
        self.fold_taps = self.split(self.dense_taps, dense[0].taps)  # ... per fold (views)
        self.start_taps = self.fold_taps if original is None else \
            [network.run(batches, taps=True).taps for batches in self.folds]  # module rule
        self.reference = {"tuning": [np.concatenate(o) for o in zip(dense[0].outputs, dense[1].outputs)],
                          "held-out": network.run(source.batches(source.held_out)).outputs}
        check_measurable(metric, network.outputs, self.reference, self.labels, self.dense_taps)
        floats = [name for name, out in zip(network.outputs, dense[0].outputs) if np.issubdtype(out.dtype, np.floating)]
        self.notes = [] if len(floats) == len(network.outputs) else \
            [f"outputs {sorted(set(network.outputs) - set(floats))} are not float: the metric ignores them"]

    def _labels(self, samples: Samples, part: str) -> list[Optional[np.ndarray]]:
        labels = [samples.labels.get(name) for name in self.network.outputs]
        if self.metric == "accuracy" and all(label is None for label in labels):
            raise DecompError(f"--metric accuracy needs labels for the {part} samples, keyed by an output "
                              f"name {self.network.outputs} (--labels, or in the --inputs file)")
        return labels

    def compare(self, outputs: Sequence[np.ndarray], part: str = "tuning") -> float:
        """The metric of ``outputs`` (the candidate's, on ``part``) against the original's."""
        chosen = [list(compress(values, self.measured)) for values in (self.reference[part], outputs, self.labels[part])]
        return fidelity(self.metric, *chosen)

    def outputs(self, weights: Weights, part: str = "tuning") -> list[np.ndarray]:
        """The network's outputs with ``weights`` in force, on ``part``."""
        return self.network.run(self.batches[part], weights).outputs

    def measure(self, weights: Weights, part: str = "tuning") -> float:
        """The metric with ``weights`` in force, on ``part``."""
        return self.compare(self.outputs(weights, part), part)

    def measure_crossed(self, fits: tuple[Weights, Weights]) -> float:
        """The tuning metric with each fold run under the weights fitted on the other (module rule)."""
        runs = [self.network.run(self.folds[0], fits[1]), self.network.run(self.folds[1], fits[0])]
        return self.compare([np.concatenate(o) for o in zip(runs[0].outputs, runs[1].outputs)])

    def fold_activations(self, fold: int, weights: Weights) -> dict[Site, np.ndarray]:
        """Every layer's activation rows of tuning fold ``fold`` with ``weights`` in force."""
        return self.network.run(self.folds[fold], weights, taps=True).taps

    @staticmethod
    def joined(per_fold: Sequence[dict[Site, np.ndarray]]) -> dict[Site, np.ndarray]:
        """Per-layer activation rows of both folds, fold 0 first (paired with ``dense_taps``); layers that
        shared one array per fold share the joined one."""
        joined, by_arrays = {}, {}
        for site in per_fold[0]:
            key = tuple(id(taps[site]) for taps in per_fold)
            if key not in by_arrays:
                by_arrays[key] = np.concatenate([taps[site] for taps in per_fold])
            joined[site] = by_arrays[key]
        return joined

    @staticmethod
    def split(joined: dict[Site, np.ndarray], first: dict[Site, np.ndarray]) -> list[dict[Site, np.ndarray]]:
        """``joined`` rows cut back into the two folds (views), fold 0 as long as in ``first``."""
        return [{site: rows[:len(first[site])] for site, rows in joined.items()},
                {site: rows[len(first[site]):] for site, rows in joined.items()}]

    def take_start_taps(self) -> list[dict[Site, np.ndarray]]:
        """The per-fold activations the schedule starts from, handed over: the gate keeps none of them (the
        schedule replaces them at its first acceptance)."""
        taps, self.start_taps = self.start_taps, []
        return taps

    def release_taps(self) -> None:
        """Let go of the activations kept for the search (after it; outputs and references stay)."""
        self.fold_taps = self.dense_taps = self.start_taps = {}

    def passes(self, value: float) -> bool:
        return value <= self.tolerance

    def outputs_of(self, model: onnx.ModelProto, session: SessionConfig, part: str = "held-out") -> list[np.ndarray]:
        """Another model's outputs (same inputs and outputs, e.g. the rewritten one) on ``part``."""
        runner = make_session(model, session)
        names = self.network.outputs
        runs = [runner.run(names, batch) for batch in self.batches[part]]
        return [np.concatenate([run[i] for run in runs]) for i in range(len(names))]
