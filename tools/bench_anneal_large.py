"""Analysis plus annealing of a 100M-parameter model on this machine: time and peak memory.

    python tools/bench_anneal_large.py [--width 4096] [--layers 6] [--blocks 8] [--samples 512]

The model, synthetic: an MLP of ``--layers`` Gemm(transB=1) + Relu of ``--width`` (6 x 4096^2 = 101M
parameters). Every weight is init noise U(-b, b), b = 1/sqrt(width), scaled by ``--noise``, plus, inside the
blocks of a partition into ``--blocks`` groups that is the same for a layer's outputs and the next layer's
inputs (hidden by a random permutation of every index space), 30% of the entries at 3-5 b: structure that
annealing should find end to end. Calibration: ``--samples`` standard normal inputs, half tuning, half held
out. The model and data are written to a temporary folder; a fresh process then loads them and prints the
analysis time (``onnx_decomp.analyze``), the time of the whole ``onnx_decomp.anneal`` (which runs the analysis
again, then the search, the refit, the exact rewrite and its validation), its peak resident memory (loading
included) against the model's own size, and the annealing summary.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnx_decomp


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def planted_mlp(width: int, layers: int, blocks: int, noise: float, rng) -> onnx.ModelProto:
    bound = 1 / np.sqrt(width)
    groups = [rng.permutation(np.arange(width) * blocks // width) for _ in range(layers + 1)]
    nodes, weights, name = [], [], "x"
    for i in range(layers):
        w = (rng.random((width, width), dtype=np.float32) * 2 - 1) * np.float32(bound * noise)
        inside = (groups[i + 1][:, None] == groups[i][None, :]) & (rng.random((width, width), dtype=np.float32) < 0.3)
        strong = (rng.random((width, width), dtype=np.float32) * 2 + 3) * np.float32(bound)
        w[inside] = (strong * np.where(rng.random((width, width), dtype=np.float32) < 0.5, -1, 1))[inside]
        del inside, strong
        nodes += [helper.make_node("Gemm", [name, f"W{i}", f"b{i}"], [f"h{i}"], transB=1, name=f"fc{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        weights += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        name = f"r{i}"
    graph = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def run(folder: Path, tolerance: float, bootstrap: int) -> None:
    """Analysis and annealing of ``folder/model.onnx`` on ``folder/calib.npz``, timed, in this process."""
    start = time.perf_counter()
    analysis = onnx_decomp.analyze(folder / "model.onnx", figures=False)
    analysis_s = time.perf_counter() - start
    print(f"analysis alone: {analysis_s:.1f} s; pi0 per weight " + ", ".join(f"{t.pi0:.2f}" for t in analysis.tensors))
    start = time.perf_counter()
    _, report = onnx_decomp.anneal(folder / "model.onnx", folder / "calib.npz", tolerance=tolerance, gate="flops",
                                   config=onnx_decomp.AnnealConfig(bootstrap=bootstrap))
    anneal_s = time.perf_counter() - start
    print(report.format().split("\nexact rewrite")[0])
    print(f"\nanneal (analysis included): {anneal_s:.1f} s; analysis + anneal {analysis_s + anneal_s:.1f} s; "
          f"{len(report.steps)} steps measured; peak resident memory {peak_mib():.0f} MiB (loading included); "
          f"MACs {report.final.mac_reduction:.2f}x fewer, {report.metric} held out {report.final.validation:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--tolerance", type=float, default=0.2)
    parser.add_argument("--bootstrap", type=int, default=2)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args()
    if args.run is not None:
        return run(args.run, args.tolerance, args.bootstrap)
    rng = np.random.default_rng(0)
    model = planted_mlp(args.width, args.layers, args.blocks, args.noise, rng)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    with tempfile.TemporaryDirectory(prefix="onnx-decomp-bench-") as folder:
        onnx.save(model, str(Path(folder) / "model.onnx"))
        np.savez(Path(folder) / "calib.npz", x=rng.standard_normal((args.samples, args.width)).astype(np.float32))
        del model
        print(f"synthetic MLP {args.layers} x {args.width}^2: {params / 1e6:.1f}M parameters "
              f"({params * 4 / 2 ** 20:.0f} MiB float32), {args.samples} calibration samples", flush=True)
        subprocess.run([sys.executable, __file__, "--run", folder, "--tolerance", str(args.tolerance),
                        "--bootstrap", str(args.bootstrap)], check=True)


if __name__ == "__main__":
    main()
