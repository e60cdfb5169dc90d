"""``onnx-decomp decompose --anneal`` as a user runs it: what is written on success, one line and exit 2
and nothing written on bad input, the loud warning without calibration data."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest

from conftest import op_types, run
from onnx_decomp.drivers.anneal import ANNEAL_SCHEMA
from test_cli import cli  # noqa: F401  (the fixture: the CLI in this process)

DIGITS = Path(__file__).parents[1] / "models" / "digits_mlp"


def test_anneal_writes_the_model_the_json_and_the_figure(tmp_path, cli):
    out, folder, summary = tmp_path / "out.onnx", tmp_path / "anneal", tmp_path / "anneal.json"
    result = cli("anneal", DIGITS / "model.onnx", out, "--calib", DIGITS / "calib.npz",
                 "--labels", DIGITS / "labels.npz", "--metric", "top1", "--tolerance", 0.01, "--gate", "flops",
                 "--report", folder, "--json", summary, "--bootstrap", 2)

    assert result.returncode == 0, result.stderr
    assert "accepted" in result.stdout and "annealed:" in result.stdout
    data = json.loads((folder / "anneal.json").read_text())
    jsonschema.validate(data, ANNEAL_SCHEMA)
    assert data == json.loads(summary.read_text())
    assert data["final"]["exact_ok"] and data["final"]["validation"] <= 0.02 and data["final"]["mac_reduction"] > 2
    assert (folder / "anneal.png").read_bytes()[:4] == b"\x89PNG"
    x = np.load(DIGITS / "calib.npz")["input"]
    decomposed, original = onnx.load(out), onnx.load(DIGITS / "model.onnx")
    agree = (run(decomposed, {"input": x})[0].argmax(1) == run(original, {"input": x})[0].argmax(1)).mean()
    assert agree >= 0.97 and op_types(decomposed).count("Gemm") > 3


def test_without_calibration_data_a_warning_goes_to_stderr_and_the_report(tmp_path, cli):
    result = cli("anneal", DIGITS / "model.onnx", tmp_path / "out.onnx", "--tolerance", 0.001,
                 "--gate", "flops", "--bootstrap", 0)
    assert result.returncode == 0, result.stderr
    assert "WARNING: no --calib" in result.stderr
    assert "WARNING: no calibration data: fidelity measured on random inputs" in result.stdout


@pytest.mark.parametrize("extra, message", [
    (["--calib", "{bad}"], "--calib lacks arrays for the model inputs ['input']"),
    (["--calib", "{missing}"], "No such file"),
    (["--calib", "{good}", "--metric", "accuracy"], "--metric accuracy needs labels"),
    (["--calib", "{good}", "--labels", "{bad}"], "--labels names no output of the model: ['x']"),
    (["--calib", "{good}", "--support", "confirmed"], "unrecognized arguments: --support confirmed"),
    (["--calib", "{good}", "--blocks", "1"], "--blocks must be at least 2"),
])
def test_bad_anneal_input_is_one_line_exit_2_and_nothing_written(tmp_path, cli, extra, message):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 64), np.float32))
    paths = {"bad": bad, "missing": tmp_path / "nope.npz", "good": DIGITS / "calib.npz"}
    out, folder = tmp_path / "out.onnx", tmp_path / "report"
    result = cli("anneal", DIGITS / "model.onnx", out, "--report", folder,
                 *[a.format(**paths) for a in extra])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not out.exists() and not folder.exists()


def test_anneal_options_are_refused_by_decompose_and_decompose_anneal_points_to_anneal(tmp_path, cli):
    result = cli("decompose", DIGITS / "model.onnx", tmp_path / "out.onnx", "--calib", DIGITS / "calib.npz")
    assert result.returncode == 2 and "unrecognized arguments: --calib" in result.stderr
    result = cli("decompose", DIGITS / "model.onnx", tmp_path / "out.onnx", "--anneal")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "onnx-decomp anneal IN OUT" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
