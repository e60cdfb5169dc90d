"""Fidelity of any OCR model file or ModelProto on the rendered data (``ocr_data``), against the ground truth
and against the dense model's own predictions.

- recognition: character error rate (edit distance / reference length, summed over lines) and the rate of
  lines read exactly, at 48 x 320;
- detection: box F1 at IoU >= 0.5 (each box's axis-aligned bounds, one-to-one greedy matching by IoU, pooled
  over pages), at 640 x 640; against the rendered lines' ink boxes too;
- direction: the share of images whose label matches (ground truth: upright 0, rotated 1).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from onnx_decomp.config import SessionConfig
from onnx_decomp.io.model_io import ModelLike
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp_models import ocr
from onnx_decomp_models.ocr_data import Split

BATCH, IOU = 16, 0.5


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = np.arange(len(b) + 1)
    for i, char in enumerate(a, 1):
        previous, row[0] = row.copy(), i
        for j, other in enumerate(b, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (char != other))
    return int(row[-1])


def cer(predicted: Sequence[str], reference: Sequence[str]) -> float:
    """Summed edit distance over summed reference length."""
    return sum(map(edit_distance, predicted, reference)) / max(1, sum(map(len, reference)))


def exact_rate(predicted: Sequence[str], reference: Sequence[str]) -> float:
    return float(np.mean([p == r for p, r in zip(predicted, reference)]))


def bounds(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] (x0, y0, x1, y1) of quadrilaterals [n, 4, 2]; already [n, 4] bounds pass through."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim == 2:
        return boxes
    return np.concatenate([boxes.min(1), boxes.max(1)], 1) if len(boxes) else np.zeros((0, 4), np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] intersection over union of bounds."""
    low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), -1)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], -1), np.prod(b[:, 2:] - b[:, :2], -1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def matches(predicted: np.ndarray, reference: np.ndarray, threshold: float = IOU) -> int:
    """How many one-to-one pairs reach ``threshold``, taken greedily by IoU."""
    overlap = iou(bounds(predicted), bounds(reference))
    found = 0
    while overlap.size and overlap.max() >= threshold:
        i, j = np.unravel_index(overlap.argmax(), overlap.shape)
        overlap[i, :], overlap[:, j] = -1, -1
        found += 1
    return found


def box_f1(predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray], threshold: float = IOU) -> float:
    """F1 of the boxes pooled over pages: 2 * matched / (predicted + reference)."""
    matched = sum(matches(p, r, threshold) for p, r in zip(predicted, reference))
    total = sum(len(p) for p in predicted) + sum(len(r) for r in reference)
    return 2 * matched / total if total else 1.0


def outputs(model: ModelLike, batch: np.ndarray, session: SessionConfig = SessionConfig("cpu")) -> np.ndarray:
    """The model's first output on ``batch``, run ``BATCH`` rows at a time."""
    run = make_session(model, session)
    name = run.get_inputs()[0].name
    return np.concatenate([run.run(None, {name: batch[i:i + BATCH]})[0] for i in range(0, len(batch), BATCH)])


def predict(kind: str, model: ModelLike, split: Split):
    """Texts (``rec``), boxes per page (``det``) or labels (``cls``) of ``model`` on ``split``."""
    if kind == "rec":
        return ocr.ctc_decode(outputs(model, ocr.rec_input(split.crops)), ocr.characters())
    if kind == "det":
        return ocr.det_boxes(outputs(model, ocr.det_input(split.pages)))
    return ocr.cls_labels(outputs(model, ocr.cls_input(split.cls_images()[0])))


def scores(kind: str, predicted, split: Split, dense: Optional[object] = None) -> dict[str, float]:
    """Fidelity figures (module docstring) against the truth and, given its predictions, the dense model."""
    if kind == "rec":
        result = {"CER": cer(predicted, split.texts), "exact": exact_rate(predicted, split.texts)}
        if dense is not None:
            result |= {"CER vs dense": cer(predicted, dense), "exact vs dense": exact_rate(predicted, dense)}
    elif kind == "det":
        result = {"F1 vs truth": box_f1(predicted, split.page_boxes)}
        if dense is not None:
            result |= {"F1 vs dense": box_f1(predicted, dense)}
    else:
        result = {"accuracy": float(np.mean(predicted == split.cls_images()[1]))}
        if dense is not None:
            result |= {"agreement": float(np.mean(predicted == dense))}
    return result
