"""The packaged PaddleOCR models (``onnx_decomp_models.ocr``) on the text rendered offline (``ocr_data``):
they load and read it, the rendering is deterministic, calibration and evaluation share no file or line,
and the committed calibration inputs are what the rendering gives on the interpreter that wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rapidocr_onnxruntime")

from onnx_decomp_models import ocr, ocr_data, ocr_eval  # noqa: E402

COMMITTED = Path(ocr_data.__file__).parent / "ocr"
# Measured (Python 3.11.7 standard library): the first 32 evaluation lines CER 0.020, exact 0.81; all 256
# CER 0.036, exact 0.68 (triple quotes and dunder underscores are most of the errors). Detection F1 against the
# ink boxes 0.978 on pages 1-2; direction accuracy 1.0 on the first 32 crops and their rotations.
MAX_CER, MIN_EXACT = 0.05, 0.65


@pytest.fixture(scope="module")
def splits():
    return ocr_data.splits()


def test_the_recognizer_reads_rendered_lines(splits):
    evaluation = splits[1]
    lines = ocr_data.Split(texts=evaluation.texts[:32], crops=evaluation.crops[:32])
    read = ocr_eval.predict("rec", ocr.model_path("rec"), lines)
    assert ocr_eval.cer(read, lines.texts) < MAX_CER
    assert ocr_eval.exact_rate(read, lines.texts) > MIN_EXACT


def test_the_detector_and_classifier_agree_with_the_rendering(splits):
    evaluation = splits[1]
    pages = ocr_data.Split(pages=evaluation.pages[1:3], page_boxes=evaluation.page_boxes[1:3])
    assert ocr_eval.scores("det", ocr_eval.predict("det", ocr.model_path("det"), pages), pages)["F1 vs truth"] > 0.9
    lines = ocr_data.Split(crops=evaluation.crops[:32])
    labels = ocr_eval.predict("cls", ocr.model_path("cls"), lines)
    assert np.mean(labels == lines.cls_images()[1]) > 0.9


def test_rendering_is_deterministic(splits):
    again = ocr_data.render_split("calib")
    assert again.digest() == splits[0].digest()
    assert again.texts == splits[0].texts


def test_calibration_and_evaluation_share_no_file_or_line(splits):
    calib, evaluation = splits
    assert set(calib.files).isdisjoint(evaluation.files)
    assert set(calib.texts).isdisjoint(evaluation.texts)
    assert len(calib.crops) == len(calib.texts) == ocr_data.COUNTS["calib"]["crops"]
    assert len(evaluation.crops) == ocr_data.COUNTS["eval"]["crops"]
    assert all(c.shape[0] == ocr.SIZES["rec"][0] and c.shape[1] <= ocr.SIZES["rec"][1] for c in calib.crops)


def test_committed_calibration_inputs_match_the_rendering(splits):
    meta = json.loads((COMMITTED / "calib.json").read_text())
    if meta["calib_digest"] != splits[0].digest():
        pytest.skip(f"another standard library or renderer than the committed one ({meta['python']})")
    for kind in ocr.MODELS:
        with np.load(COMMITTED / f"{kind}_calib.npz") as data:
            np.testing.assert_array_equal(data[ocr.INPUT], ocr_data.calibration(kind)[ocr.INPUT])


def test_edit_distance_and_box_f1():
    assert ocr_eval.edit_distance("kitten", "sitting") == 3
    assert ocr_eval.cer(["abc", ""], ["abd", "xy"]) == pytest.approx(3 / 5)
    box = np.array([[10, 10], [50, 10], [50, 30], [10, 30]], np.float32)
    assert ocr_eval.box_f1([box[None]], [np.array([[10, 10, 50, 30]], np.float32)]) == 1.0
    assert ocr_eval.box_f1([box[None] + 100], [box[None]]) == 0.0
