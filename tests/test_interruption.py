"""Signals and the operating system: a run stopped by SIGINT or SIGTERM exits 130 or 143 with one line and
leaves no staging folder; a full disk (here: a file-size limit), a closed stdout, a name too long for the
``.data`` side file, an output that is not a regular file, and ``OUT/`` naming a missing folder each give
one line, never a traceback, and write nothing they should not."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import time

import onnx
import pytest
from onnx import helper

from conftest import hidden_blocks, make_model, tensor, value
from test_bad_inputs import refused, snapshot  # noqa: F401 (fixtures)


@pytest.fixture
def model(tmp_path, rng):
    """A 64 x 64 block-diagonal MatMul (16 KiB of weights) as ``tmp_path/m.onnx``."""
    w, _ = hidden_blocks(rng, [(16, 16)] * 4)
    path = tmp_path / "m.onnx"
    onnx.save(make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", ["N", 64])],
                         [value("y", ["N", 64])], [tensor("B", w)]), path)
    return path


def cli(*args, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "onnx_decomp.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **options)


def staging(folder) -> list:
    return list(folder.glob(".onnx-decomp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("number,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_exits_conventionally_and_leaves_nothing(tmp_path, model, number, code):
    before = snapshot(tmp_path)
    # 200 rounds of 300,000 rows take seconds, not the milliseconds of batch 1: the run is still timing
    # SIGINT's default disposition, as a shell starts a command in the foreground: a job a shell starts in the
    # background inherits SIGINT ignored, and keeps ignoring it, as it should
    run = cli("bench", model, model, "--batch", "300000", "--budget", "60", "--json", tmp_path / "b.json",
              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not staging(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the timing rounds
    run.send_signal(number)
    out, err = run.communicate(timeout=60)
    assert (run.returncode, err.count("\n")) == (code, 1), err
    assert "Traceback" not in err and signal.Signals(number).name in err
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, model):
    def small_files():  # writes past 4 KiB fail with EFBIG, as on a full disk with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    before = snapshot(tmp_path)
    run = cli("decompose", model, tmp_path / "out.onnx", "--gate", "flops", preexec_fn=small_files)
    out, err = run.communicate(timeout=120)
    assert (run.returncode, err.count("\n")) == (2, 1), err
    assert "File too large" in err
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_closed_stdout_after_the_model_was_written_is_not_exit_1(tmp_path, model):
    read, write = os.pipe()
    os.close(read)  # the reader is gone, as after `| head -0`
    run = subprocess.run([sys.executable, "-m", "onnx_decomp.cli", "decompose", str(model),
                          str(tmp_path / "out.onnx"), "--gate", "flops"], stdout=write, stderr=subprocess.PIPE,
                         text=True, timeout=120)
    os.close(write)
    assert (run.returncode, run.stderr.count("\n")) == (141, 1), run.stderr
    assert "stdout was closed" in run.stderr
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)
    assert not staging(tmp_path)


def test_outputs_that_are_not_regular_files_are_never_replaced(tmp_path, model, refused):
    os.mkfifo(tmp_path / "fifo")
    refused("not a regular file", "decompose", model, tmp_path / "fifo")
    refused("not a regular file", "inspect", model, "--json", tmp_path / "fifo")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


def test_side_file_names_and_folder_paths_are_checked_before_any_work(tmp_path, model, refused):
    os.mkfifo(tmp_path / "out.onnx.data")
    refused("out.onnx.data: not a regular file", "decompose", model, tmp_path / "out.onnx")
    os.unlink(tmp_path / "out.onnx.data")
    long_name = "m" * (os.pathconf(tmp_path, "PC_NAME_MAX") - len(".data") + 1)
    refused("cannot write", "decompose", model, tmp_path / long_name)
    refused("give a file path, not a folder", "decompose", model, f"{tmp_path / 'missing'}/")
    refused("give a file path, not a folder", "bench", model, model, "--json", f"{tmp_path}/")
