"""What the search keeps on disk between its uses (``search.on_disk``): the evidence always, a fit from
``SPILL_BYTES`` on; every use reads the array afresh, a file goes with its handle, and keeping fits on disk
changes no decision and no number of an annealing run; a killed process's folder is swept by the next."""

import gc
import os
import pickle
import signal
import subprocess
import sys
import tempfile

from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from conftest import make_model, tensor, value
from onnx_decomp import AnnealConfig, anneal
from onnx_decomp.config import SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.search import on_disk
from onnx_decomp.search.evidence import StoredEvidence
from onnx_decomp.search.network import Network, unpacked
from onnx_decomp.search.refit import Refitter
from onnx_decomp_passes import plan_from_support

DIGITS = Path(__file__).parents[1] / "models" / "digits_mlp"
MODEL, CALIB, LABELS = (str(DIGITS / name) for name in ("model.onnx", "calib.npz", "labels.npz"))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The process's temporary folder made afresh under ``tmp_path`` for this test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    on_disk._folder.cache_clear()
    yield tmp_path
    on_disk._folder.cache_clear()


def _files(folder):
    return sorted(path.name for path in folder.glob("*/*.npy"))


def test_every_lookup_reads_the_evidence_afresh_and_the_files_go_with_the_last_view(folder):
    rng = np.random.default_rng(0)
    written = {"w1": rng.random((40, 30)).astype(np.float16), "w2": rng.random((5, 7)).astype(np.float16)}
    store = StoredEvidence.write(written)
    view = store.keyed({"site1": "w1", "site2": "w2", "site3": "unanalysed"})
    del store
    first, second = view["site1"], view["site1"]
    assert first.dtype == np.float16 and not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, written["w1"])
    np.testing.assert_array_equal(view["site2"], written["w2"])
    assert view["site3"] is None and view.get("site4") is None and list(view) == ["site1", "site2", "site3"]
    assert len(_files(folder)) == 2
    del view
    gc.collect()
    assert _files(folder) == []


def test_a_large_fit_lives_on_disk_reads_afresh_travels_by_value_and_goes_with_its_handle(folder, rng):
    n = 512  # a 512 x 512 float32 weight: SPILL_BYTES whole, a quarter of it in each of two diagonal blocks
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [value("x", ["N", n])],
                       [value("y", ["N", n])], [tensor("W", rng.standard_normal((n, n)).astype(np.float32))])
    (layer,) = Network(ModelContext.load(model), SessionConfig("cpu")).layers
    x = rng.standard_normal((64, n))
    halves = plan_from_support(np.kron(np.eye(2, dtype=bool), np.ones((n // 2, n // 2), bool)))
    small = Refitter(0.1)(layer, halves, x, x)[0]
    assert all(isinstance(values, np.ndarray) for *_, values in small.blocks) and _files(folder) == []
    large = Refitter(0.1)(layer, plan_from_support(np.ones((n, n), bool)), x, x)[0]
    (*_, values), = large.blocks
    assert isinstance(values, on_disk.DiskArray) and len(_files(folder)) == 1
    first, second = unpacked(large), unpacked(large)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, second)
    travelled = pickle.loads(pickle.dumps(large))  # as Ray sends it: the values, written again on arrival
    assert travelled.blocks[0][2].path != values.path and len(_files(folder)) == 2
    np.testing.assert_array_equal(unpacked(travelled), first)
    del large, values, travelled
    gc.collect()
    assert _files(folder) == []


def test_fits_on_disk_change_no_decision_and_no_number_of_an_annealing_run(folder, monkeypatch):
    config = AnnealConfig(metric="top1", tolerance=0.01, families=("single", "units", "lowrank"), bootstrap=0)
    runs = []
    for spill_bytes in (on_disk.SPILL_BYTES, 0):  # the digits MLP's fits are all smaller than SPILL_BYTES
        monkeypatch.setattr(on_disk, "SPILL_BYTES", spill_bytes)
        runs.append(anneal(MODEL, CALIB, labels=LABELS, config=config, gate="flops"))
    (model, report), (on_disk_model, on_disk_report) = runs
    assert [(s.candidate.structure, s.candidate.fidelity, s.verdict) for s in report.steps] == \
        [(s.candidate.structure, s.candidate.fidelity, s.verdict) for s in on_disk_report.steps]
    assert sum(s.verdict.name == "ACCEPTED" for s in report.steps) >= 2
    for tensor_, other in zip(model.graph.initializer, on_disk_model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(tensor_), numpy_helper.to_array(other))


SPILLS = """
import os, signal, sys, time
import numpy as np
from onnx_decomp.search.on_disk import DiskArray
kept = DiskArray(np.ones(4))
print(kept.path.parent, flush=True)
if sys.argv[1] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
elif sys.argv[1] == "living":
    time.sleep(120)
"""


def test_a_killed_process_s_folder_goes_when_the_next_process_makes_its_own_and_a_living_one_s_stays(tmp_path):
    """A Ray worker killed mid-call runs no exit handler: its files stay until another process sweeps them."""
    def spill(how: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SPILLS, how], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "TMPDIR": str(tmp_path)})
    killed = spill("killed")
    dead = Path(killed.communicate(timeout=60)[0].strip())
    assert killed.returncode == -signal.SIGKILL and (dead / "owner.lock").exists()
    living = spill("living")
    try:
        alive = Path(living.stdout.readline().strip())
        finished = spill("finished")
        made = Path(finished.communicate(timeout=60)[0].strip())
        assert not dead.exists() and alive.exists() and not made.exists()  # swept; kept; removed at its exit
        assert finished.returncode == 0 and len(list(alive.glob("*.npy"))) == 1
    finally:
        living.kill()
        living.communicate()
