"""Data that cannot measure fidelity is refused before annealing decides anything (``search.data_checks``):
inputs that are not finite numbers, too few distinct samples, labels of the wrong kind or range, labels the
original model does not score above chance on, Inf weights; held-out rows never copy tuning rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import make_model, run, tensor, value
from onnx_decomp import AnnealConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.search.calibration import calibration
from test_bad_inputs import refused, snapshot  # noqa: F401 (fixtures)

DIGITS = Path(__file__).parents[1] / "models" / "digits_mlp"


@pytest.fixture(scope="module")
def digits():
    """The digits MLP's calibration inputs and its own predictions on them (what it scores 1.0 on)."""
    x = np.load(DIGITS / "calib.npz")["input"][:120]
    return x, run(onnx.load(DIGITS / "model.onnx"), {"input": x})[0].argmax(1)


def anneal(*extra):
    return ["anneal", DIGITS / "model.onnx", "{out}", "--gate", "flops", "--bootstrap", "0", *extra]


@pytest.mark.parametrize("calib,labels,message", [
    (lambda x, y: np.full(x.shape, "a"), None, "'input' holds <U1 values, not numbers"),
    (lambda x, y: np.where(np.eye(*x.shape) > 0, np.nan, x), None, "'input' holds NaN or Inf values"),
    (lambda x, y: np.repeat(x[:2], 60, axis=0), None, "--calib holds 2 distinct sample(s) in 120 rows"),
    (None, lambda x, y: np.array(["seven"] * len(y)), "labels for output 'logits' are <U5 values, not class"),
    (None, lambda x, y: np.eye(10, dtype=np.float32)[y], "one-hot or scores, not class indices"),
    (None, lambda x, y: y + 0.5, "hold values that are not whole numbers"),
    (None, lambda x, y: y + 10, "range over [10, 19]: class indices of an output of width 10"),
    (None, lambda x, y: (y + 1) % 10, "no better than chance"),
], ids=["strings", "nan", "repeated", "string-labels", "one-hot", "fractions", "out-of-range", "not-its-labels"])
def test_data_that_cannot_measure_fidelity_is_refused(tmp_path, refused, digits, calib, labels, message):
    x, y = digits
    np.savez(tmp_path / "calib.npz", input=x if calib is None else calib(x, y))
    np.savez(tmp_path / "labels.npz", logits=y if labels is None else labels(x, y))
    refused(message, *[str(a).format(out=tmp_path / "out.onnx") for a in anneal(
        "--calib", tmp_path / "calib.npz", "--labels", tmp_path / "labels.npz", "--metric", "accuracy")])


def test_a_validation_set_of_tuning_rows_is_refused(tmp_path, refused, digits):
    x, _ = digits
    np.savez(tmp_path / "calib.npz", input=x)
    np.savez(tmp_path / "inputs.npz", input=x[10:20])
    refused("every row of the --inputs copies a tuning row", *[str(a).format(out=tmp_path / "out.onnx") for a in anneal(
        "--calib", tmp_path / "calib.npz", "--inputs", tmp_path / "inputs.npz")])


def test_inf_weights_are_refused_not_a_linear_algebra_error(tmp_path, refused, rng):
    w = rng.standard_normal((8, 8)).astype(np.float32)
    w[2, 3] = np.inf
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("MatMul", ["r", "V"], ["y"])], [value("x", ["N", 8])], [value("y", ["N", 8])],
                       [tensor("W", w), tensor("V", rng.standard_normal((8, 8)).astype(np.float32))])
    onnx.save(model, tmp_path / "inf.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((40, 8)).astype(np.float32))
    refused("outputs or activations on the data hold NaN or Inf", "anneal", tmp_path / "inf.onnx",
            tmp_path / "out.onnx", "--calib", tmp_path / "calib.npz", "--gate", "flops", "--null",
            "xavier-uniform")


def test_held_out_rows_never_copy_tuning_rows(rng):
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [value("x", ["N", 6])],
                       [value("y", ["N", 3])], [tensor("W", rng.standard_normal((6, 3)).astype(np.float32))])
    x = rng.standard_normal((20, 6)).astype(np.float32)
    data = calibration(ModelContext.load(model), AnnealConfig(held_out=0.5), {"x": np.concatenate([x, x])})
    tuning = {row.tobytes() for row in data.tuning.inputs["x"]}
    assert len(data.held_out) and not any(row.tobytes() in tuning for row in data.held_out.inputs["x"])
    assert any("copy tuning rows: left out" in note for note in data.notes)
