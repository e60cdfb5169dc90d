"""Whether annealing data can measure what is asked of it. Each refusal is one line naming the remedy.

Rules:
- Inputs (``--calib``, ``--inputs``) are numbers (Booleans, integers, floats) and finite: a string cannot be
  fed, and one NaN or Inf makes a metric NaN or Inf.
- The calibration data holds at least ``MIN_DISTINCT`` distinct samples (a sample: its row of every input):
  a sample repeated to reach the count measures no more than the sample.
- Fidelity is measured on rows the search never saw: held-out rows that copy a tuning row are left out of
  the held-out part (noted); none left is an error.
- The original's outputs and activations on the data are finite (Inf or NaN weights make them not).
- With ``--metric accuracy`` the labels are class indices: numbers that are whole, one per output row (an
  array shaped like the output is one-hot), within ``[0, width)`` of the output's last axis; and the
  original scores above chance on the tuning rows (above the share of the most frequent label), or every
  cut would keep an accuracy that was never there.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import numpy as np

from onnx_decomp.errors import DecompError

logger = logging.getLogger(__name__)

MIN_DISTINCT = 3  # two folds to tune on, one sample to validate on
NUMBERS = "biuf"  # numpy dtype kinds: Boolean, signed, unsigned, float


def check_inputs(arrays: Mapping[str, np.ndarray], names: Sequence[str], option: str) -> None:
    """The arrays ``names`` of ``option`` hold finite numbers (module rule)."""
    for name in names:
        array = np.asarray(arrays[name])
        if array.dtype.kind not in NUMBERS:
            raise DecompError(f"{option}: {name!r} holds {array.dtype} values, not numbers: give numeric arrays")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DecompError(f"{option}: {name!r} holds NaN or Inf values: give finite samples (drop or fill "
                              "those rows)")


def _rows(inputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """Each sample's bytes over every input."""
    arrays = [np.ascontiguousarray(a) for a in inputs.values()]
    n = len(arrays[0])
    return [b"".join(a[i].tobytes() for a in arrays) for i in range(n)]


def check_distinct(inputs: Mapping[str, np.ndarray], option: str) -> None:
    """At least ``MIN_DISTINCT`` distinct samples (module rule)."""
    rows = _rows(inputs)
    distinct = len(set(rows))
    if distinct < MIN_DISTINCT:
        raise DecompError(f"{option} holds {distinct} distinct sample(s) in {len(rows)} rows: need at least "
                          f"{MIN_DISTINCT} (two folds to tune on, one to validate on); give more distinct samples")


def unseen_rows(held_out: Mapping[str, np.ndarray], tuning: Mapping[str, np.ndarray], what: str) -> np.ndarray:
    """The indices of the held-out rows that copy no tuning row (module rule)."""
    seen = set(_rows(tuning))
    keep = np.array([i for i, row in enumerate(_rows(held_out)) if row not in seen], dtype=np.int64)
    if not len(keep):
        raise DecompError(f"every row of the {what} copies a tuning row: fidelity needs rows the search never "
                          "saw; give distinct samples")
    return keep


def check_measurable(metric: str, names: Sequence[str], reference: Mapping[str, Sequence[np.ndarray]],
                     labels: Mapping[str, Sequence[Optional[np.ndarray]]], taps: Mapping[int, np.ndarray]) -> None:
    """The original's outputs (``reference`` per part) and activations are finite; with ``accuracy``, the
    labels per part fit their outputs and the original scores above chance on the tuning part (module rules)."""
    if not all(np.isfinite(a).all() for arrays in [*reference.values(), taps.values()] for a in arrays
               if a.dtype.kind == "f"):
        raise DecompError("the original model's outputs or activations on the data hold NaN or Inf (its weights "
                          "or the data): no fidelity can be measured; give a model and data with finite values")
    if metric != "accuracy":
        return
    for part, outputs in reference.items():
        for name, output, label in zip(names, outputs, labels[part]):
            if label is not None:
                _check_labels(name, output, np.asarray(label))
    for name, output, label in zip(names, reference["tuning"], labels["tuning"]):
        if label is not None:
            _check_above_chance(name, output, np.asarray(label).reshape(-1).astype(np.int64))


def _check_labels(name: str, output: np.ndarray, label: np.ndarray) -> None:
    width = output.shape[-1] if output.ndim else 1
    where = f"labels for output {name!r}"
    if label.dtype.kind not in NUMBERS:
        raise DecompError(f"{where} are {label.dtype} values, not class indices: give integers 0..{width - 1}")
    if label.shape == output.shape and output.ndim > 1 and width > 1:
        raise DecompError(f"{where} have the output's shape {list(output.shape)}: one-hot or scores, not class "
                          "indices; give labels.argmax(-1)")
    if label.size != output.size // max(width, 1):
        raise DecompError(f"{where} hold {label.size} values for {output.size // max(width, 1)} output rows: "
                          "give one class index per row")
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise DecompError(f"{where} hold values that are not whole numbers: give class indices 0..{width - 1}")
    if label.size and (label.min() < 0 or label.max() >= width):
        raise DecompError(f"{where} range over [{label.min():g}, {label.max():g}]: class indices of an output "
                          f"of width {width} lie in [0, {width - 1}]")


def _check_above_chance(name: str, output: np.ndarray, truth: np.ndarray) -> None:
    rows = output.reshape(-1, output.shape[-1]) if output.ndim > 1 else output.reshape(1, -1)
    accuracy = float(np.mean(rows.argmax(1) == truth))
    chance = float(np.bincount(truth).max() / len(truth)) if len(truth) else 0.0
    logger.info("output %s: the original's accuracy %.4g, chance %.4g", name, accuracy, chance)
    if accuracy <= chance:
        raise DecompError(f"the original model scores accuracy {accuracy:.3g} on the labels for output {name!r}, "
                          f"no better than chance {chance:.3g} (the most frequent label's share): the labels do not "
                          "belong to these samples or this output; give the labels the model was trained on")
