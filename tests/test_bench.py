"""``onnx-decomp bench`` on a tiny model: the JSON it writes is complete and its ratios follow from the
timings it reports; every quantization scheme is a peer; inputs are random at the shapes given (every
symbolic dim) or real arrays sliced to each batch size; a figure that does not exist prints "n/a"; errors are
one line with exit code 2 and nothing written."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import hidden_blocks, make_model, tensor, value
from onnx_decomp.cli import main

FIELDS = {"dense", "decomposed", "onnxruntime", "provider", "intra_op_threads", "spin", "cpu_count", "peers",
          "clock", "rounds", "inputs", "shapes", "results"}
RESULT_FIELDS = {"batch", "model", "samples_ms", "median_ms", "speedup", "matmul_flops", "flop_reduction",
                 "efficiency"}


@pytest.fixture
def models(tmp_path, rng):
    w, _ = hidden_blocks(rng, [(16, 16)] * 4)
    dense = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", ["batch", 64])],
                       [value("y", ["batch", 64])], [tensor("B", w.T.copy())])
    paths = tmp_path / "dense.onnx", tmp_path / "decomposed.onnx"
    onnx.save(dense, paths[0])
    assert main(["decompose", str(paths[0]), str(paths[1]), "--gate", "flops", "--check", "1"]) == 0
    return paths


def test_bench_json_is_complete_and_consistent(tmp_path, models, capfd):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    code = main(["bench", *map(str, models), "--batch", "1,8", "--threads", "1", "--peer", "int8", "--clock", "cpu",
                 "--budget", "0.05", "--json", str(out), "--plot", str(plot)])
    printed = capfd.readouterr().out
    assert code == 0 and "intra-op threads 1" in printed and "decomposed+int8" in printed
    data = json.loads(out.read_text())
    assert set(data) == FIELDS and data["provider"] == "cpu" and data["intra_op_threads"] == 1
    assert data["clock"] == "cpu" and data["spin"] is False and data["peers"] == ["int8"]
    assert data["inputs"] == "random" and data["shapes"] == {"1": {"x": [1, 64]}, "8": {"x": [8, 64]}}
    assert [(r["batch"], r["model"]) for r in data["results"]] == [
        (b, m) for b in (1, 8) for m in ("dense", "dense+int8", "decomposed", "decomposed+int8")]
    for batch in (1, 8):
        rows = {r["model"]: r for r in data["results"] if r["batch"] == batch}
        dense = np.array(rows["dense"]["samples_ms"])
        for row in rows.values():
            assert set(row) == RESULT_FIELDS and len(row["samples_ms"]) == len(dense) >= 7
            assert row["speedup"] == pytest.approx(np.median(dense / np.array(row["samples_ms"])), rel=1e-9)
            assert row["median_ms"] == pytest.approx(np.median(row["samples_ms"]), rel=1e-9)
            assert row["flop_reduction"] == pytest.approx(rows["dense"]["matmul_flops"] / row["matmul_flops"])
            assert row["efficiency"] == pytest.approx(row["speedup"] / row["flop_reduction"])
        assert rows["dense"]["matmul_flops"] == 2 * batch * 64 * 64
        assert rows["decomposed"]["flop_reduction"] == pytest.approx(4.0)
        assert rows["decomposed+int8"]["matmul_flops"] == rows["decomposed"]["matmul_flops"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["cuda", "mismatch", "folder", "clock", "peer", "static", "rows", "lacking",
                                  "both"])
def test_bench_errors_are_one_line_and_write_nothing(tmp_path, models, rng, capfd, case):
    args = [*map(str, models), "--budget", "0.01", "--json", str(tmp_path / "b.json")]
    if case == "cuda":
        args += ["--provider", "cuda"]
    elif case == "mismatch":
        other = make_model([helper.make_node("Relu", ["z"], ["y"])], [value("z", ["batch", 64])],
                           [value("y", ["batch", 64])])
        onnx.save(other, tmp_path / "other.onnx")
        args[1] = str(tmp_path / "other.onnx")
    elif case == "clock":
        args += ["--clock", "cpu", "--threads", "2"]
    elif case in ("peer", "static"):
        args += ["--peer", {"peer": "int8,int3", "static": "int8-static"}[case]]
    elif case in ("rows", "lacking", "both"):
        np.savez(tmp_path / "data.npz", **{"z" if case == "lacking" else "x": np.ones((4, 64), np.float32)})
        args += ["--inputs", str(tmp_path / "data.npz"), *{"rows": ["--batch", "1,8"], "lacking": [],
                                                          "both": ["--input-shape", "x:2,64"]}[case]]
    else:
        args[-1] = str(tmp_path / "missing" / "b.json")
    code = main(["bench", *args])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("onnx-decomp")
    assert {"cuda": "CUDA", "mismatch": "different inputs", "folder": "does not exist", "clock": "--threads 1",
            "peer": "expected names from int8,int8-channel,int4,int8-static", "static": "needs calibration inputs",
            "rows": "--batch 8: --inputs holds 4 rows", "lacking": "lacks the model's inputs ['x']",
            "both": "not both"}[case] in err
    assert not (tmp_path / "b.json").exists()


def test_any_number_of_models_against_the_first_and_their_tradeoff_figure(tmp_path, models):
    from onnx_decomp.config import SessionConfig
    from onnx_decomp.drivers.bench import bench_models
    from onnx_decomp.report.figures import plot_tradeoff

    dense, decomposed = (onnx.load(str(p)) for p in models)
    report = bench_models({"a": dense, "b": decomposed, "c": decomposed}, [2], SessionConfig("cpu", threads=1),
                          budget_s=0.05, clock="cpu", flop_sources={"c": "a"})
    rows = {r.model: r for r in report.results}
    assert [r.model for r in report.results] == ["a", "b", "c"] and rows["a"].speedup == 1.0
    assert (rows["b"].flop_reduction, rows["c"].flop_reduction) == (pytest.approx(4.0), 1.0)
    figure = tmp_path / "tradeoff.png"
    plot_tradeoff({"batch 2": {"ours": [(r.speedup, 0.9, "b") for r in report.results[1:]]}}, 0.95, figure,
                  "accuracy", "tiny")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_quantization_scheme_is_a_peer_of_both_models(tmp_path, models, rng, capfd):
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 64)).astype(np.float32))
    out = tmp_path / "b.json"
    assert main(["bench", *map(str, models), "--batch", "2", "--peer", "int8,int8-channel,int4,int8-static",
                 "--calib", str(tmp_path / "calib.npz"), "--budget", "0.01", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    schemes = ["int8", "int8-channel", "int4", "int8-static"]
    assert [r["model"] for r in results] == [f"{model}{peer}" for model in ("dense", "decomposed")
                                             for peer in ("", *(f"+{s}" for s in schemes))]
    flops = {r["model"]: r["matmul_flops"] for r in results}
    assert all(flops[f"{model}+{s}"] == flops[model] for model in ("dense", "decomposed") for s in schemes)


def sequence_model() -> onnx.ModelProto:
    """x [batch, seq, 64] -> MatMul [64, 32]: the work grows with both symbolic dims."""
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    return make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [value("x", ["batch", "seq", 64])],
                      [value("y", ["batch", "seq", 32])], [tensor("W", w)])


def test_input_shapes_set_every_symbolic_dim_and_the_batch_the_first(tmp_path, capfd):
    onnx.save(sequence_model(), tmp_path / "m.onnx")
    out = tmp_path / "b.json"
    assert main(["bench", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--input-shape", "x:1,10,64",
                 "--batch", "1,3", "--budget", "0.01", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["shapes"] == {"1": {"x": [1, 10, 64]}, "3": {"x": [3, 10, 64]}}
    assert [r["matmul_flops"] for r in data["results"]] == [2 * b * 10 * 64 * 32 for b in (1, 1, 3, 3)]
    assert "batch 3: x [3, 10, 64]" in capfd.readouterr().out


def test_real_inputs_are_sliced_to_each_batch_size(tmp_path, capfd):
    onnx.save(sequence_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "data.npz", x=np.ones((5, 7, 64), np.float32), unused=np.zeros(3))
    out = tmp_path / "b.json"
    assert main(["bench", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "data.npz"),
                 "--budget", "0.01", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["inputs"] == str(tmp_path / "data.npz")
    assert data["shapes"] == {"1": {"x": [1, 7, 64]}, "5": {"x": [5, 7, 64]}}  # default: 1 and the rows given
    assert [r["matmul_flops"] for r in data["results"]] == [2 * b * 7 * 64 * 32 for b in (1, 1, 5, 5)]


def test_a_ratio_without_flops_prints_n_a(tmp_path, capfd):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [value("x", ["N", 8])], [value("y", ["N", 8])])
    onnx.save(model, tmp_path / "relu.onnx")
    assert main(["bench", str(tmp_path / "relu.onnx"), str(tmp_path / "relu.onnx"), "--batch", "1",
                 "--budget", "0.01"]) == 0
    rows = [line.split() for line in capfd.readouterr().out.splitlines() if line.startswith("1 ")]
    assert [row[-2:] for row in rows] == [["n/a", "n/a"]] * 2
