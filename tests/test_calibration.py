"""Calibration data: split, folds, batches of a fixed first dimension, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from conftest import make_model, tensor, value
from onnx_decomp.config import AnnealConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.errors import DecompError
from onnx_decomp.search.calibration import calibration


def fixed_batch_model(rng, batch=4):
    return make_model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1, name="fc")],
                      [value("x", [batch, 6])], [value("y", [batch, 3])],
                      [tensor("W", rng.standard_normal((3, 6)).astype(np.float32)),
                       tensor("b", np.zeros(3, np.float32))])


def test_calibration_splits_batches_and_drops_what_fills_no_fixed_batch(rng):
    ctx = ModelContext.load(fixed_batch_model(rng))
    x = rng.standard_normal((23, 6))  # float64 on purpose: cast to the input's type

    data = calibration(ctx, AnnealConfig(held_out=0.5), {"x": x, "other": np.zeros(3)})

    assert data.batch == 4 and data.source == "file"
    assert len(data.tuning) == 8 and len(data.held_out) == 12  # 11 and 12 samples, cut to whole batches
    assert all(batch["x"].shape == (4, 6) and batch["x"].dtype == np.float32 for batch in data.batches(data.tuning))
    assert data.notes == ["3 tuning sample(s) fill no batch of 4 and are dropped"]
    with pytest.raises(DecompError, match=r"lacks arrays for the model inputs \['x'\]"):
        calibration(ctx, AnnealConfig(), {"y": x})
    with pytest.raises(DecompError, match="names no output"):
        calibration(ctx, AnnealConfig(), {"x": x}, labels={"logits": np.zeros(23)})
    random = calibration(ctx, AnnealConfig())
    assert random.source == "random" and "random inputs" in random.warnings[0]
    given = calibration(ctx, AnnealConfig(), {"x": x}, inputs={"x": x[:8] + 1, "y": np.zeros(8, np.int64)})
    assert given.validation == "--inputs" and len(given.held_out) == 8 and len(given.tuning) == 20
    assert "y" in given.held_out.labels  # labels of the validation set ride in the --inputs file


def _free_batch_gemm(rng) -> ModelContext:
    """One Gemm ``x [N, 6] -> y [N, 3]``: a free first dimension."""
    return ModelContext.load(make_model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1, name="fc")],
                                        [value("x", ["N", 6])], [value("y", ["N", 3])],
                                        [tensor("W", rng.standard_normal((3, 6)).astype(np.float32))]))


def test_the_search_runs_at_most_search_samples_per_fold_and_the_held_out_part_stays_whole(rng):
    ctx = _free_batch_gemm(rng)
    x = rng.standard_normal((100, 6))
    capped = calibration(ctx, AnnealConfig(search_samples=10), {"x": x})
    assert [len(fold) for fold in capped.folds] == [10, 10] and len(capped.tuning) == 20
    assert len(capped.held_out) == 50 and any("tunes on 20 of the 50 tuning samples" in n for n in capped.notes)
    whole = calibration(ctx, AnnealConfig(search_samples=None), {"x": x})
    assert [len(fold) for fold in whole.folds] == [25, 25] and not any("--search-samples" in n for n in whole.notes)
    assert set(map(tuple, capped.folds[0].inputs["x"].tolist())) <= set(map(tuple, whole.folds[0].inputs["x"].tolist()))


def test_a_batch_holds_no_more_than_a_tuning_fold(rng):
    """A free first dimension: ``batch_size`` samples at a time, but no more than the larger fold holds, so the
    held-out part runs in batches no larger than the search's (ONNX Runtime keeps a batch's memory)."""
    ctx = _free_batch_gemm(rng)
    x = rng.standard_normal((32, 6))
    data = calibration(ctx, AnnealConfig(batch_size=256), {"x": x})
    assert [len(fold) for fold in data.folds] == [8, 8] and len(data.held_out) == 16
    assert data.batch == 8 and [len(b["x"]) for b in data.batches(data.held_out)] == [8, 8]
    assert calibration(ctx, AnnealConfig(batch_size=4), {"x": x}).batch == 4
