"""``--ray-address``: a run joins a Ray cluster that another process started (``ray start --head``, two CPUs,
loopback only, token authentication with a token of its own) and writes the single-process model; a driver that
does not ask for the cluster's token authentication gets one line and exit 2, and nothing is written; block by
block, the block files in a work folder the cluster reads."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

DIGITS = Path(__file__).parents[1] / "models" / "digits_mlp"
MODEL, CALIB, LABELS = (str(DIGITS / name) for name in ("model.onnx", "calib.npz", "labels.npz"))
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's single-node switch: 127.0.0.1 stays itself
TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # this module's cluster's own


@pytest.fixture(scope="module")
def head():
    """A head node in a process of its own (``ray start --head --block``) and its address; stopped after."""
    folder = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must stay under 108 characters
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         "--port=0", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={folder}"],
        env={**os.environ, **LOOPBACK, **TOKEN}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = Path(folder) / "ray_current_cluster"
    deadline = time.monotonic() + 60
    while not address.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert address.exists(), "ray start --head did not come up"
        yield address.read_text().strip()
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _anneal(out: Path, *extra: str, env: dict) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (a fresh Ray driver), info logs on: anneal the digits MLP to ``out`` and its
    JSON."""
    return subprocess.run(
        [sys.executable, "-m", "onnx_decomp.cli", "-v", "anneal", MODEL, str(out), "--calib", CALIB, "--labels", LABELS,
         "--metric", "top1", "--tolerance", "0.01", "--gate", "flops", "--bootstrap", "0",
         "--json", str(out.with_suffix(".json")), *extra],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_ray_address_joins_a_running_cluster_and_writes_the_single_process_model(head, tmp_path):
    written = {}
    for name, extra in (("alone", ()), ("joined", ("--ray-address", head))):
        result = _anneal(tmp_path / f"{name}.onnx", *extra, env={**LOOPBACK, **TOKEN})
        assert result.returncode == 0, result.stderr
        written[name] = ((tmp_path / f"{name}.onnx").read_bytes(),
                         json.loads((tmp_path / f"{name}.json").read_text()))
    assert f"2 fold workers on Ray ({head})" in result.stderr  # the joined run's workers ran on that cluster
    assert written["alone"] == written["joined"]


def test_by_block_on_a_cluster_writes_its_block_files_to_the_work_folder_and_the_single_process_model(head,
                                                                                                      tmp_path):
    """``--by-block --ray-address`` with ``--work-folder`` (here on this machine, as shared storage would be on a
    cluster): the fold workers read each block's file from there; the work folder is empty afterwards."""
    work = tmp_path / "work"
    work.mkdir()
    written = {}
    for name, extra in (("alone", ()), ("joined", ("--ray-address", head, "--work-folder", str(work)))):
        result = _anneal(tmp_path / f"{name}.onnx", "--by-block", "--stream-tolerance", "0.2", *extra,
                         env={**LOOPBACK, **TOKEN})
        assert result.returncode == 0, result.stderr
        written[name] = ((tmp_path / f"{name}.onnx.data").read_bytes(),
                         json.loads((tmp_path / f"{name}.json").read_text())["final"])
    assert f"2 fold workers on Ray ({head})" in result.stderr and f"wrote {work}/onnx-decomp-blocks-" in result.stderr
    assert written["alone"] == written["joined"] and not any(work.iterdir())


def test_a_driver_without_the_clusters_token_mode_is_one_line_and_exit_2(head, tmp_path):
    out = tmp_path / "out.onnx"
    result = _anneal(out, "--ray-address", head, env={**LOOPBACK, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("onnx-decomp: error:") and "RAY_AUTH_MODE=token" in lines[-1]
    assert not out.exists() and not out.with_suffix(".json").exists()
