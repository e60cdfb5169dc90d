"""The Ray backend (``distributed``, extra ``ray``, installed by the test extras) on a local instance of two
CPUs, loopback only, no dashboard: two fold workers give the single-process result bit for bit (the written
model, every step's fidelity, anneal.json), block by block too; a worker killed in the middle of a call is
restarted and the call retried with the same result; without Ray, ``--workers`` is one line and exit 2 and
everything else runs as before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnx_decomp
from onnx_decomp.config import ClusterConfig
from onnx_decomp.distributed.cluster import Cluster, import_ray, pids
from onnx_decomp.distributed.folds import FoldWorker
from onnx_decomp_models.synthetic import block_chain
from test_cli import cli  # noqa: F401  (the fixture: the CLI in this process)

ray = import_ray(local=True)  # before anything imports Ray: loopback only; the dev extras install it

DIGITS = Path(__file__).parents[1] / "models" / "digits_mlp"
MODEL, CALIB, LABELS = (str(DIGITS / name) for name in ("model.onnx", "calib.npz", "labels.npz"))
KILL_AT = 3  # the fold worker's evaluate call in which it kills itself


@pytest.fixture(scope="module")
def instance():
    """One local Ray instance of two CPUs for the module (started once: about 5 s)."""
    with Cluster(ClusterConfig(workers=2)) as made:
        yield made


@pytest.fixture
def cluster(instance):
    """Two fold workers on the instance for one test (each holds a CPU: gone when the test ends)."""
    with Cluster(ClusterConfig(workers=2)) as made:
        yield made


def _config(**overrides) -> onnx_decomp.AnnealConfig:
    return onnx_decomp.AnnealConfig(**{"metric": "top1", "tolerance": 0.01, "families": ("single", "units", "lowrank"),
                                       "bootstrap": 0, **overrides})


def _anneal(cluster=None, **overrides):
    return onnx_decomp.anneal(MODEL, CALIB, labels=LABELS, config=_config(**overrides), gate="flops", cluster=cluster)


def _same(first, second) -> None:
    """The written model, every step and anneal.json identical."""
    (model, report), (other_model, other_report) = first, second
    assert [(s.candidate.unit, s.candidate.structure, s.candidate.fidelity, s.verdict) for s in report.steps] == \
        [(s.candidate.unit, s.candidate.structure, s.candidate.fidelity, s.verdict) for s in other_report.steps]
    assert json.dumps(report.to_dict(), sort_keys=True) == json.dumps(other_report.to_dict(), sort_keys=True)
    assert model.SerializeToString() == other_model.SerializeToString()


@pytest.mark.parametrize("refit", [True, False])
def test_two_ray_workers_give_the_single_process_result(cluster, refit):
    assert ray.util.get_node_ip_address() == "127.0.0.1"  # the local instance is on the loopback address
    alone = _anneal(refit=refit)
    assert len(alone[1].accepted) >= 3 and len(alone[1].steps) > len(alone[1].accepted)  # rollbacks too
    on_ray = _anneal(cluster, refit=refit)
    _same(alone, on_ray)
    assert len(cluster.fold_workers) == 2 and len(set(pids(cluster.fold_workers))) == 2


class KillOnce(FoldWorker):
    """A fold worker that kills its own process (SIGKILL) in its ``KILL_AT``-th evaluate call unless the file
    ``marker`` exists, which it writes first (its pid): the first incarnation dies once, in the middle of a
    call, and its restarted self carries on."""

    marker = ""

    def __init__(self, threads: int = 1):
        super().__init__(threads)
        self.count = 0

    def evaluate(self, *args, **kwargs):
        self.count += 1
        if self.count == KILL_AT and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().evaluate(*args, **kwargs)


def test_a_worker_killed_in_a_call_is_restarted_and_the_call_retried_with_nothing_lost(instance, tmp_path):
    marker = tmp_path / "killed"
    worker = type("KillOnceHere", (KillOnce,), {"marker": str(marker)})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the class travels by value
    try:
        alone = _anneal()
        with Cluster(ClusterConfig(workers=2), worker=worker) as dying:  # on the running instance: no new one
            before = pids(dying.fold_workers)
            on_ray = _anneal(dying)
            after = pids(dying.fold_workers)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists() and int(marker.read_text()) in before  # a worker died in its third call ...
    assert set(before) != set(after) and int(marker.read_text()) not in after  # ... was started again ...
    _same(alone, on_ray)  # ... and its call retried: nothing lost


def test_block_by_block_on_two_ray_workers_writes_the_single_process_model(cluster, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    path, _ = block_chain(folder, 3, 64, 4)
    np.savez(folder / "calib.npz", x=np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32))
    written = {}
    for name, used in (("alone", None), ("ray", cluster)):
        (tmp_path / name).mkdir()
        report = onnx_decomp.anneal_by_block(path, tmp_path / name / "model.onnx", folder / "calib.npz",
                                             metric="rel-l2", tolerance=0.05, config=_config(families=("single",)),
                                             gate="flops", cluster=used)
        data = report.to_dict()
        for block in data["blocks"]:
            block.pop("seconds"), block.pop("peak_rss_bytes")  # measured, not computed
        written[name] = (data, *((tmp_path / name / f).read_bytes() for f in ("model.onnx", "model.onnx.data")))
    assert len(written["alone"][0]["blocks"]) == 3 and written["alone"][0]["final"]["within_budget"]
    assert written["alone"] == written["ray"]


def test_anneal_workers_on_the_command_line_writes_the_single_process_model(instance, tmp_path, cli):
    outputs = {}
    for name, extra in (("alone", []), ("ray", ["--workers", "2"])):  # Ray running: its instance is used
        out = tmp_path / f"{name}.onnx"
        result = cli("anneal", MODEL, out, "--calib", CALIB, "--labels", LABELS, "--metric", "top1",
                     "--tolerance", 0.01, "--gate", "flops", "--bootstrap", 0, "--json", tmp_path / f"{name}.json",
                     *extra)
        assert result.returncode == 0, result.stderr
        outputs[name] = (out.read_bytes(), json.loads((tmp_path / f"{name}.json").read_text()))
    assert outputs["alone"] == outputs["ray"]


WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # import ray fails, as where the extra is not installed
from onnx_decomp.cli import main
code = main(sys.argv[1:])
assert "ray" not in sys.modules or sys.modules["ray"] is None
sys.exit(code)
"""


@pytest.mark.parametrize("extra, code, message", [
    (["--workers", "2"], 2, "--workers and --ray-address need Ray: pip install 'onnx-decomp[ray]'"),
    (["--ray-address", "127.0.0.1:6379"], 2, "need Ray"),
    (["--workers", "0"], 2, "--workers must be a number >= 1, got 0"),
    ([], 0, ""),
])
def test_without_ray_the_cluster_options_are_one_line_and_exit_2_and_the_rest_runs(tmp_path, extra, code, message):
    out = tmp_path / "out.onnx"
    result = subprocess.run([sys.executable, "-c", WITHOUT_RAY, "anneal", MODEL, str(out), "--calib", CALIB,
                             "--labels", LABELS, "--metric", "top1", "--tolerance", "0.01", "--gate", "flops",
                             "--bootstrap", "0", *extra], capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr
    if code:
        assert result.stderr.count("\n") == 1 and message in result.stderr and not out.exists()
    else:
        assert out.exists() and "annealed:" in result.stdout
