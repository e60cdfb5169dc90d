"""Block-by-block annealing (``drivers.by_block``, ``anneal --by-block``) on real ONNX Runtime: the blocks and
their budget ramp, the end-to-end fidelity reported against the whole budget and measured again on the
written model, the planted structure found, and peak memory that does not grow with the model's depth
(measured in fresh processes: ``VmHWM``, their own peak)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnx_decomp
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp.search.fidelity import output_fidelity
from onnx_decomp_models import cnn
from onnx_decomp_models.synthetic import block_chain
from onnx_decomp_passes import BlockPlan, SlicePlan
from test_cli import cli  # noqa: F401  (the fixture: the CLI in this process)

TOLERANCE = 0.05


def _chain(folder: Path, layers: int, width: int, blocks: int, samples: int = 64) -> tuple[Path, Path, Path]:
    """``block_chain`` (Relu after each block-diagonal MatMul, hidden permutations) with calibration data and a
    separate validation set."""
    folder.mkdir(parents=True, exist_ok=True)
    path, _ = block_chain(folder, layers, width, blocks)
    rng = np.random.default_rng(1)
    calib, inputs = folder / "calib.npz", folder / "inputs.npz"
    np.savez(calib, x=rng.standard_normal((samples, width)).astype(np.float32))
    np.savez(inputs, x=rng.standard_normal((32, width)).astype(np.float32))
    return path, calib, inputs


def _inside_planted_blocks(weight: np.ndarray, plan: BlockPlan) -> bool:
    """Every branch's rows read one planted block's columns, and its columns are among them (``weight``:
    ``[out, in]``, exactly zero outside the planted blocks)."""
    reads = [frozenset(np.flatnonzero(row)) for row in weight]
    return all(len({reads[r] for r in branch.rows}) == 1 and set(branch.cols) <= reads[branch.rows[0]]
               for branch in plan.branches)


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_each_layer_is_a_block_annealed_within_its_share_and_the_whole_is_within_the_budget(tmp_path):
    path, calib, inputs = _chain(tmp_path / "in", layers=4, width=128, blocks=4)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    config = onnx_decomp.AnnealConfig(families=("single",), bootstrap=0)
    report = onnx_decomp.anneal_by_block(path, out, calib, inputs=inputs, metric="rel-l2", tolerance=TOLERANCE,
                                         config=config, gate="flops")

    assert [b.layers for b in report.blocks] == [[f"mm{i}"] for i in range(4)]
    assert [b.inputs for b in report.blocks] == [["x"], ["h0"], ["h1"], ["h2"]]  # the first cut after each layer
    np.testing.assert_allclose([b.tolerance for b in report.blocks],  # the ramp in quadrature, the last the whole
                               [TOLERANCE * np.sqrt((i + 1) / 4) for i in range(3)] + [TOLERANCE])
    assert all(b.validation <= b.tolerance * 1.5 for b in report.blocks)  # held out: near its share
    assert report.final["within_budget"] and report.final["validation"] <= TOLERANCE
    assert report.final["mac_reduction"] >= 4  # at least the planted 4 blocks in every layer

    x = np.load(inputs)["x"]  # the end-to-end figure, measured again on the written model
    measured = output_fidelity("rel-l2", _outputs(path, x), _outputs(out, x))
    assert measured == pytest.approx(report.final["validation"], rel=1e-3, abs=1e-6)

    weights = {t.name: numpy_helper.to_array(t, base_dir=str(path.parent)).T
               for t in onnx.load(path, load_external_data=False).graph.initializer}
    assert sorted(site.weight for site in report.plans) == [f"W{i}" for i in range(4)]
    for site, plan in report.plans.items():
        assert isinstance(plan, BlockPlan) and len(plan.branches) >= 4
        assert _inside_planted_blocks(weights[site.weight], plan), site.weight
    written = onnx.load(out, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in written.graph.initializer)  # tensor by tensor
    assert (out.parent / "model.onnx.data").exists()
    assert json.loads(json.dumps(report.to_dict()))["final"]["within_budget"] is True


MEASURE = """
import json, sys
from pathlib import Path
import numpy as np, onnxruntime, onnx_decomp
from onnx_decomp.drivers.by_block import peak_rss
from onnx_decomp_models.synthetic import block_chain
folder, layers, by_block = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
path, weight_bytes = block_chain(folder, layers, 1024, 8)
np.savez(folder / "calib.npz", x=np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32))
before = peak_rss()  # VmHWM: ru_maxrss would start at the (large) pytest parent's peak
config = onnx_decomp.AnnealConfig(metric="rel-l2", tolerance=0.05, families=("single",), bootstrap=0)
if by_block:
    onnx_decomp.anneal_by_block(path, folder / "out.onnx", folder / "calib.npz", config=config, gate="flops")
else:
    onnx_decomp.anneal(path, folder / "calib.npz", config=config, gate="flops")
peak = peak_rss()
print(json.dumps({"weights": weight_bytes, "growth": peak - before}))
"""


def _growth(folder: Path, layers: int, by_block: bool) -> dict:
    """A fresh process: the peak resident memory it gained annealing a ``layers`` x 1024 chain (4 MiB a layer)."""
    folder.mkdir()
    result = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(layers), str(int(by_block))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_number_of_blocks(tmp_path):
    """Measured: 4 and 12 layers (16 and 48 MiB of weights) both peak 75-110 MiB above the imports block by
    block (ONNX Runtime's sessions and the search's arrays for one 4 MiB block: a fixed cost at this size;
    a block's peak settles after the first few blocks), while annealing the model whole takes 138 MiB at
    2 layers, 215 MiB at 4, 450 MiB at 8."""
    shallow, deep = _growth(tmp_path / "shallow", 4, True), _growth(tmp_path / "deep", 12, True)
    whole = _growth(tmp_path / "whole", 4, False)
    added = deep["weights"] - shallow["weights"]  # 32 MiB more weights
    assert deep["growth"] - shallow["growth"] < 0.25 * added, (shallow, deep)
    assert deep["growth"] < whole["growth"], (deep, whole)  # deeper by block, yet below a shallower whole run


def test_anneal_by_block_on_the_command_line_writes_the_model_and_the_json(tmp_path, cli):
    path, calib, _ = _chain(tmp_path / "in", layers=2, width=64, blocks=4, samples=32)
    out, summary = tmp_path / "out.onnx", tmp_path / "by_block.json"
    result = cli("anneal", path, out, "--by-block", "--calib", calib, "--metric", "rel-l2", "--tolerance", TOLERANCE,
                 "--families", "single", "--gate", "flops", "--bootstrap", 0, "--json", summary)
    assert result.returncode == 0, result.stderr
    assert "block-by-block annealing" in result.stdout and "end to end: rel-l2" in result.stdout
    data = json.loads(summary.read_text())
    assert len(data["blocks"]) == 2 and data["final"]["within_budget"] and set(data["plans"]) == {"W0", "W1"}
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    assert output_fidelity("rel-l2", _outputs(path, x), _outputs(out, x)) <= 2 * TOLERANCE


@pytest.mark.parametrize("extra, message", [
    (["--by-block", "--report", "{folder}"], "--by-block writes no --report folder: use --json"),
    (["--stream-tolerance", "0.1"], "--stream-tolerance is the budget between blocks: it needs --by-block"),
    (["--by-block", "--metric", "max-abs"], "needs --stream-tolerance"),
    (["--by-block", "--quantize", "int8"], "--by-block does not quantize"),
    (["--by-block", "--ray-address", "127.0.0.1:6379"], "--by-block on a Ray cluster (--ray-address) needs "
                                                         "--work-folder DIR"),
    (["--work-folder", "{folder}"], "--work-folder holds the block files: it needs --by-block"),
    (["--by-block", "--work-folder", "{folder}"], "not a folder"),
])
def test_bad_by_block_input_is_one_line_exit_2_and_nothing_written(tmp_path, cli, extra, message):
    path, calib, _ = _chain(tmp_path / "in", layers=2, width=64, blocks=4, samples=32)
    out, folder = tmp_path / "out.onnx", tmp_path / "report"
    result = cli("anneal", path, out, "--calib", calib, *[a.format(folder=folder) for a in extra])
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not out.exists() and not folder.exists()


FREED = """
import sys
import numpy as np
from onnx_decomp.drivers.by_block import map_large_allocations
def rss():
    return next(int(line.split()[1]) << 10 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
if sys.argv[1] == "1":
    map_large_allocations()
first = np.ones(1 << 20)  # 8 MiB: glibc's default maps it and, once it is freed, serves such sizes from its heap
del first
before = rss()
arrays = [np.ones(1 << 19) for _ in range(16)]  # 16 x 4 MiB
pin = np.ones(1 << 16)  # 512 KiB after them in the heap: what they free cannot shrink the heap's top
del arrays
print(rss() - before)
"""


def test_by_block_hands_freed_arrays_back_to_the_system_at_once():
    """``map_large_allocations`` (``anneal_by_block`` sets it): 64 MiB of 4 MiB arrays freed leave the process's
    resident memory where it was, with no ``malloc_trim``; glibc's default kept all 64 MiB (measured)."""
    result = subprocess.run([sys.executable, "-c", FREED, "1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 8 << 20, result.stdout


def test_by_block_sessions_run_without_onnx_runtimes_cpu_arena(tmp_path, monkeypatch):
    """Every session a by-block run makes has ONNX Runtime's CPU arena off (it would keep the memory of the
    session's largest run for the session's life); sessions elsewhere keep ONNX Runtime's default."""
    made = []

    class Recorded(ort.InferenceSession):  # ONNX Runtime's own sessions, each kept to be asked afterwards
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ort, "InferenceSession", Recorded)
    path, _ = block_chain(tmp_path, 2, 64, 4)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32))
    config = onnx_decomp.AnnealConfig(metric="rel-l2", tolerance=0.05, families=("single",), bootstrap=0)
    onnx_decomp.anneal_by_block(path, tmp_path / "out.onnx", tmp_path / "calib.npz", config=config, gate="flops")
    assert len(made) > 4 and all(not s.get_session_options().enable_cpu_mem_arena for s in made)
    assert make_session(path).get_session_options().enable_cpu_mem_arena


def test_a_block_whose_channels_go_is_rewritten_from_its_masked_model_on_disk(tmp_path):
    """By block, the masked model is a file in the work folder; removing channels reads it back in (dead
    channels: an exact removal)."""
    onnx.save(cnn.planted_cnn(dead=8), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", **cnn.calibration())
    config = onnx_decomp.AnnealConfig(families=("channels",), bootstrap=0)
    report = onnx_decomp.anneal_by_block(tmp_path / "cnn.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz",
                                         metric="rel-l2", tolerance=1e-6, config=config, gate="flops")

    assert report.plans and all(isinstance(plan, SlicePlan) for plan in report.plans.values())
    written = {t.name: t.dims for t in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert written["conv2/W_folded"][:2] == [cnn.H - 8, cnn.H - 8]  # 8 dead channels gone on both sides
    x = cnn.calibration(8, seed=5)["x"]
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for p in (tmp_path / "cnn.onnx", tmp_path / "out.onnx")]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-4, atol=1e-5)
