"""``onnx-decomp bench`` on a tiny model: the JSON it writes is complete and its ratios follow from the
timings it reports; errors are one line with exit code 2 and nothing written."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import hidden_blocks, make_model, tensor, value
from onnx_decomp.cli import main

FIELDS = {"dense", "decomposed", "onnxruntime", "provider", "intra_op_threads", "spin", "cpu_count", "peer",
          "clock", "rounds", "results"}
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
    assert data["clock"] == "cpu" and data["spin"] is False
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


@pytest.mark.parametrize("case", ["cuda", "mismatch", "folder", "clock"])
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
    else:
        args[-1] = str(tmp_path / "missing" / "b.json")
    code = main(["bench", *args])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("onnx-decomp: error:")
    assert {"cuda": "CUDA", "mismatch": "different inputs", "folder": "does not exist",
            "clock": "--threads 1"}[case] in err
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
