"""Calibration data for annealing: samples keyed by graph input name, split into a tuning part and a
held-out part, fed to ONNX Runtime in batches.

Rules:
- Calibration arrays (an ``.npz`` file or a mapping) hold one array per graph input, keyed by its name,
  samples along the first axis, every input the same number of samples; other arrays are ignored. Arrays
  are cast to the input's element type.
- Labels (for the ``accuracy`` metric) are keyed by output name: one class index per output row, samples
  along the first axis.
- Data that cannot measure fidelity is refused (``search.data_checks``: numbers, finite, distinct samples),
  and held-out rows that copy tuning rows are left out (noted).
- Split: a seeded permutation of the samples; a ``held_out`` fraction of them (at least one, and at least
  two left to tune on) is held out. The fidelity gate decides on the tuning part; the report's fidelity is
  measured on the held-out part. Validation arrays given separately (``--inputs``, with labels under output
  names in the same file) are the final validation set instead, and every calibration sample tunes.
- The tuning part is cut into two seeded folds, kept in that order (fold 0, then fold 1): a refit fitted
  on one fold is judged on the other (``search.schedule``). Each fold keeps at most ``search_samples`` of its
  samples (a seeded choice, noted when it leaves some out): every candidate runs both folds, so this bounds
  what one step of the search costs.
- Batches: an input whose first dimension is fixed in the model is fed exactly that many samples at a time
  (a remainder that fills no batch is dropped, noted); otherwise up to ``batch_size`` samples at a time, and
  no more than the larger tuning fold holds: every search step runs each fold whole, so the held-out part
  then runs in batches no larger than those, and ONNX Runtime's memory for one batch, which its sessions
  keep, is no more than the search needs.
- No calibration data: ``random_sets`` batches of random inputs at the run's input shapes
  (``runtime.sessions.random_inputs``; a first dimension the model leaves free holds ``RANDOM_BATCH``
  samples), split as above, with a loud warning: fidelity on random inputs says little about a model's
  real inputs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from onnx_decomp.config import AnnealConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.errors import DecompError, UnsupportedConstructError
from onnx_decomp.io.arrays import load_arrays
from onnx_decomp.io.shapes import InputSpec
from onnx_decomp.runtime.sessions import random_inputs
from onnx_decomp.search.data_checks import check_distinct, check_inputs, unseen_rows

logger = logging.getLogger(__name__)

Arrays = Union[str, os.PathLike, Mapping[str, np.ndarray]]
RANDOM_BATCH = 32
RANDOM_WARNING = ("no calibration data: fidelity measured on random inputs, which says little about the "
                  "model's real inputs; give --calib with real samples")


def arrays_of(source: Optional[Arrays], option: str) -> dict[str, np.ndarray]:
    """Arrays keyed by name from an ``.npz`` path (``io.arrays.load_arrays``) or a mapping (empty for None)."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return {name: np.asarray(array) for name, array in source.items()}
    return load_arrays(Path(source), option)


@dataclass
class Samples:
    """Model inputs and labels, samples along the first axis."""

    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, index: np.ndarray) -> "Samples":
        return Samples({k: v[index] for k, v in self.inputs.items()}, {k: v[index] for k, v in self.labels.items()})

    def whole(self, batch: int) -> "Samples":
        """The first samples that fill whole batches of ``batch``."""
        return self.subset(np.arange(len(self) - len(self) % batch))


@dataclass
class Calibration:
    """The tuning and held-out samples of a run and how they are batched (module rules)."""

    tuning: Samples  # fold 0, then fold 1
    held_out: Samples
    folds: tuple[Samples, Samples]
    batch: int  # samples per ONNX Runtime run
    source: str  # "file", "random"
    validation: str  # what the held-out part is
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def batches(self, samples: Samples) -> list[dict[str, np.ndarray]]:
        """Feeds of ``batch`` samples each (module rule)."""
        n = len(samples)
        return [{name: array[start:start + self.batch] for name, array in samples.inputs.items()}
                for start in range(0, n, self.batch)]

    @property
    def random(self) -> bool:
        return self.source == "random"


def _fixed_batch(ctx: ModelContext) -> Optional[int]:
    """The first dimension the model fixes for its inputs, if any (all fixed ones must agree)."""
    initializers = {t.name for t in ctx.proto.graph.initializer}
    fixed = {value.type.tensor_type.shape.dim[0].dim_value for value in ctx.proto.graph.input
             if value.name not in initializers and value.type.tensor_type.shape.dim
             and value.type.tensor_type.shape.dim[0].HasField("dim_value")}
    if len(fixed) > 1:
        raise UnsupportedConstructError(f"inputs fix different first dimensions {sorted(fixed)}: cannot batch")
    return next(iter(fixed), None)


def _samples(ctx: ModelContext, arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray],
             option: str) -> Samples:
    """The model's inputs out of ``arrays`` (cast to their element types) with one count of samples."""
    missing = [spec.name for spec in ctx.specs if spec.name not in arrays]
    if missing:
        raise DecompError(f"{option} lacks arrays for the model inputs {missing} (it has {sorted(arrays)})")
    check_inputs(arrays, [spec.name for spec in ctx.specs], option)
    inputs = {}
    for spec in ctx.specs:
        array = arrays[spec.name]
        if array.ndim != len(spec.shape) or array.ndim == 0:
            raise DecompError(f"{option}: {spec.name!r} has shape {list(array.shape)}, the input has rank "
                              f"{len(spec.shape)} (samples along the first axis)")
        inputs[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
    counts = {len(array) for array in [*inputs.values(), *labels.values()]}
    if len(counts) != 1:
        raise DecompError(f"{option}: inputs and labels hold different numbers of samples {sorted(counts)}")
    return Samples(inputs, labels)


def _labels(arrays: dict[str, np.ndarray], ctx: ModelContext) -> dict[str, np.ndarray]:
    outputs = {o.name for o in ctx.proto.graph.output}
    return {name: array for name, array in arrays.items() if name in outputs}


def calibration(ctx: ModelContext, config: AnnealConfig, calib: Optional[Arrays] = None,
                labels: Optional[Arrays] = None, inputs: Optional[Arrays] = None) -> Calibration:
    """Load, check, split and batch the data of an annealing run (module rules)."""
    fixed = _fixed_batch(ctx)
    warnings, notes = [], []
    if calib is None:
        if labels is not None:
            raise DecompError("--labels needs --calib: labels belong to calibration samples")
        rng, batch = np.random.default_rng(config.seed), fixed or RANDOM_BATCH
        specs = [InputSpec(s.name, s.dtype, (batch, *s.shape[1:])) for s in ctx.specs if s.shape]
        if len(specs) != len(ctx.specs):
            raise UnsupportedConstructError("a scalar model input has no sample axis: give --calib")
        sets = [random_inputs(specs, rng) for _ in range(config.random_sets)]
        samples = Samples({spec.name: np.concatenate([s[spec.name] for s in sets]) for spec in specs})
        source = "random"
        warnings.append(RANDOM_WARNING)
        logger.warning(RANDOM_WARNING)
    else:
        label_arrays = arrays_of(labels, "--labels")
        outputs = {o.name for o in ctx.proto.graph.output}
        unknown = sorted(set(label_arrays) - outputs)
        if unknown:
            raise DecompError(f"--labels names no output of the model: {unknown} (outputs {sorted(outputs)})")
        samples = _samples(ctx, arrays_of(calib, "--calib"), label_arrays, "--calib")
        check_distinct(samples.inputs, "--calib")
        batch, source = fixed or config.batch_size, "file"
    if inputs is not None:
        arrays = arrays_of(inputs, "--inputs")
        tuning, held_out, validation = samples, _samples(ctx, arrays, _labels(arrays, ctx), "--inputs"), "--inputs"
    else:
        if len(samples) < 3:
            raise DecompError(f"--calib holds {len(samples)} sample(s): need at least 3 (two folds to tune on, "
                              "one sample held out)")
        order = np.random.default_rng(config.seed).permutation(len(samples))
        held = min(len(samples) - 2, max(1, round(config.held_out * len(samples))))
        tuning, held_out = samples.subset(np.sort(order[held:])), samples.subset(np.sort(order[:held]))
        validation = "held-out calibration samples" if source == "file" else "held-out random inputs"
    unseen = unseen_rows(held_out.inputs, tuning.inputs, validation)
    if len(unseen) < len(held_out):
        notes.append(f"{len(held_out) - len(unseen)} of the {validation} copy tuning rows: left out")
    held_out = held_out.subset(unseen)
    step = fixed or 1
    order = np.random.default_rng(config.seed + 1).permutation(len(tuning))
    cap = config.search_samples or len(tuning)
    folds = tuple(tuning.subset(np.sort(half[:cap])).whole(step) for half in np.array_split(order, 2))
    if sum(len(half) for half in np.array_split(order, 2)) > 2 * cap:
        notes.append(f"the search tunes on {2 * cap} of the {len(tuning)} tuning samples ({cap} per fold, "
                     "--search-samples)")
    whole = held_out.whole(step)
    dropped = {"tuning": min(len(tuning), 2 * cap) - sum(len(f) for f in folds),
               "validation": len(held_out) - len(whole)}
    notes += [f"{count} {name} sample(s) fill no batch of {fixed} and are dropped"
              for name, count in dropped.items() if count]
    if min(len(folds[0]), len(folds[1]), len(whole)) == 0:
        raise DecompError(f"too few samples: need two batches of {step} to tune on and one to validate on")
    batch = fixed or min(batch, max(len(folds[0]), len(folds[1])))
    tuning = Samples({k: np.concatenate([f.inputs[k] for f in folds]) for k in folds[0].inputs},
                     {k: np.concatenate([f.labels[k] for f in folds]) for k in folds[0].labels})
    held_out = whole
    logger.info("calibration: %d tuning and %d validation samples (%s), batches of %d", len(tuning),
                len(held_out), validation, batch)
    return Calibration(tuning, held_out, folds, batch, source, validation, warnings, notes)
