"""The command line as a user runs it: exit codes, one-line errors, nothing written on failure.

Most tests call ``main(argv)`` in-process (output captured at the file-descriptor level, so ONNX Runtime's
native log lines would show); the tests about exit codes and the single stderr line spawn real processes,
one of them through the installed console script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import hidden_blocks, make_model, op_types, run, tensor, value
from onnx_decomp.cli import main


def spawn(*args, program=(sys.executable, "-m", "onnx_decomp.cli")):
    """The CLI in a process of its own: returncode, stdout, stderr."""
    return subprocess.run([*program, *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def cli(capfd):
    """The CLI in this process: returncode, stdout, stderr."""

    def call(*args):
        code = main([str(a) for a in args])
        out, err = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return call


@pytest.fixture
def blocked(tmp_path, rng):
    w, _ = hidden_blocks(rng, [(8, 8), (8, 8), (8, 8), (8, 8)])
    model = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")],
                       [value("x", ["batch", 32])], [value("y", ["batch", 32])], [tensor("B", w.T.copy())])
    path = tmp_path / "blocked.onnx"
    onnx.save(model, path)
    return path


def test_decompose_writes_validated_model_and_json(tmp_path, blocked, rng, cli):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = cli("decompose", blocked, out, "--gate", "flops", "--forms", "branches", "--check", 2, "--json", report,
                 "--input-shape", "x:3,32")
    assert result.returncode == 0, result.stderr
    assert "validation on cpu, 2 input set(s)" in result.stdout
    data = json.loads(report.read_text())
    assert data["nodes"][0]["blocks"] == 4 and data["validation"]["ok"] is True
    assert data["before"]["matmul_flops"] == 2 * 3 * 32 * 32 and data["after"]["matmul_flops"] == 2 * 3 * 256
    x = rng.standard_normal((5, 32)).astype(np.float32)
    model, original = onnx.load(out), onnx.load(blocked)
    assert op_types(model).count("MatMul") == 4
    np.testing.assert_allclose(run(model, {"x": x})[0], run(original, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_inspect_prints_table(blocked, cli):
    result = cli("inspect", blocked, "--gate", "flops")
    assert result.returncode == 0
    assert "fc" in result.stdout and "rewrite" in result.stdout and "MatMul FLOPs" in result.stdout


def _bad_inputs(tmp_path, blocked):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model at all" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(blocked.read_bytes()[: len(blocked.read_bytes()) // 2])
    return {"missing": (tmp_path / "nope.onnx", "no such file"),
            "folder": (tmp_path, "is a folder"),
            "garbage": (garbage, "not an ONNX model"),
            "truncated": (truncated, "ONNX model")}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "folder", "garbage", "truncated"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, blocked, case):
    path, message = _bad_inputs(tmp_path, blocked)[case]
    before = path.read_bytes() if path.is_file() else None
    out = tmp_path / "out.onnx"
    result = spawn("decompose", path, out)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    if before is not None:
        assert path.read_bytes() == before


def test_output_equal_to_input_is_refused(blocked, cli):
    before = blocked.read_bytes()
    result = cli("decompose", blocked, blocked)
    assert result.returncode == 2 and "output path equals the input" in result.stderr
    assert blocked.read_bytes() == before


def test_unreadable_external_data(tmp_path, blocked, cli):
    model = onnx.load(blocked)
    ext = tmp_path / "ext.onnx"
    onnx.save_model(model, ext, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    result = cli("decompose", ext, tmp_path / "out.onnx")
    assert result.returncode == 2 and "truncated" in result.stderr
    data.unlink()
    result = cli("decompose", ext, tmp_path / "out.onnx")
    assert result.returncode == 2 and "not found" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_require_change_on_dense_model(tmp_path, rng):
    dense = tmp_path / "dense.onnx"
    onnx.save(make_model([helper.make_node("MatMul", ["x", "B"], ["y"])], [value("x", ["N", 4])],
                         [value("y", ["N", 4])], [tensor("B", rng.standard_normal((4, 4)).astype(np.float32))]),
              dense)
    out = tmp_path / "out.onnx"
    result = spawn("decompose", dense, out, "--require-change")
    assert result.returncode == 3 and "nothing to rewrite" in result.stderr and not out.exists()
    result = spawn("decompose", dense, out)
    assert result.returncode == 0 and "no MatMul/Gemm weight passed the gate" in result.stdout
    assert out.exists()


@pytest.mark.slow
def test_validation_mismatch_exits_1_and_writes_nothing(tmp_path, rng):
    """A model with a random op gives different outputs per session: validation must catch it."""
    w, _ = hidden_blocks(rng, [(4, 4), (4, 4)])
    nodes = [helper.make_node("MatMul", ["x", "B"], ["h"]),
             helper.make_node("RandomNormalLike", ["h"], ["noise"]),
             helper.make_node("Add", ["h", "noise"], ["y"])]
    path = tmp_path / "noisy.onnx"
    onnx.save(make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 8])], [tensor("B", w.T.copy())]),
              path)
    out = tmp_path / "out.onnx"
    result = spawn("decompose", path, out, "--gate", "flops", "--json", tmp_path / "r.json")
    assert result.returncode == 1
    assert "differs from the original" in result.stderr and "NO" in result.stdout
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_bad_input_shape_flag(blocked, tmp_path, cli):
    result = cli("decompose", blocked, tmp_path / "o.onnx", "--input-shape", "nosuch:1,2")
    assert result.returncode == 2 and "names no input" in result.stderr
    result = cli("decompose", blocked, tmp_path / "o.onnx", "--input-shape", "x:1,2,3")
    assert result.returncode == 2 and "rank 3 given" in result.stderr


def test_cuda_request_without_cuda_is_a_clear_error(blocked, tmp_path, cli):
    """This CI has the CPU build of onnxruntime: --provider cuda must say so, not fall back silently."""
    import onnxruntime as ort

    result = cli("decompose", blocked, tmp_path / "o.onnx", "--provider", "cuda")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert result.returncode == 0 and "validation on cuda" in result.stdout
    else:
        assert result.returncode == 2 and "no CUDA provider" in result.stderr
        assert not (tmp_path / "o.onnx").exists()


def _planted_blocks_with_init_noise(tmp_path, rng):
    """64x64 weight: 4 hidden blocks far outside the torch-linear bound b = 1/8, plus init-like noise
    (|w| <= 0.05 b) everywhere else."""
    bound = 1 / 8
    w, _ = hidden_blocks(rng, [(16, 16)] * 4)
    w = np.where(w != 0, np.sign(w) * bound * (1.5 + rng.random(w.shape)), rng.uniform(-0.05, 0.05, w.shape) * bound)
    path = tmp_path / "noisy_blocks.onnx"
    onnx.save(make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", ["N", 64])],
                         [value("y", ["N", 64])], [tensor("B", w.T.astype(np.float32))]), path)
    return path


def test_confirmed_support_is_lossy_and_bounded_by_tolerance(tmp_path, rng, cli):
    path = _planted_blocks_with_init_noise(tmp_path, rng)
    out = tmp_path / "out.onnx"
    exact = cli("decompose", path, out, "--gate", "flops", "--require-change")
    assert exact.returncode == 3  # the noise makes the nonzero pattern dense

    result = cli("decompose", path, out, "--gate", "flops", "--forms", "branches", "--support", "confirmed", "--json",
                 tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["nodes"][0]["blocks"] == 4 and report["validation"]["tolerance"]["rel_l2"] == 0.05
    assert 0 < report["validation"]["outputs"][0]["rel_l2"] < 0.05
    assert op_types(onnx.load(out)).count("MatMul") == 4

    strict = cli("decompose", path, tmp_path / "strict.onnx", "--gate", "flops", "--support", "confirmed",
                 "--tolerance", "1e-6")
    assert strict.returncode == 1 and not (tmp_path / "strict.onnx").exists()


def test_validation_on_given_inputs(tmp_path, blocked, rng, cli):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=rng.standard_normal((7, 32)).astype(np.float32))
    result = cli("decompose", blocked, tmp_path / "o.onnx", "--gate", "flops", "--inputs", inputs)
    assert result.returncode == 0 and "validation on cpu, 1 input set(s)" in result.stdout
    (tmp_path / "bad.npz").write_bytes(b"nope")
    result = cli("decompose", blocked, tmp_path / "o2.onnx", "--inputs", tmp_path / "bad.npz")
    assert result.returncode == 2 and "cannot read input arrays" in result.stderr


@pytest.mark.slow
def test_inputs_that_do_not_fit_the_model(tmp_path, blocked, rng):
    for name, array, message in (("y", np.zeros((2, 32), np.float32), "the model takes ['x']"),
                                 ("x", np.zeros((2, 5), np.float32), "ONNX Runtime failed on the inputs")):
        inputs = tmp_path / f"{name}.npz"
        np.savez(inputs, **{name: array})
        result = spawn("decompose", blocked, tmp_path / "o.onnx", "--gate", "flops", "--inputs", inputs)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()


@pytest.mark.slow
def test_console_script_runs_decompose(tmp_path, blocked):
    program = Path(sys.executable).with_name("onnx-decomp")
    result = spawn("decompose", blocked, tmp_path / "out.onnx", "--gate", "flops", program=(program,))
    assert result.returncode == 0, result.stderr
    assert "rewrite" in result.stdout and (tmp_path / "out.onnx").exists()
