"""Dense vs decomposed MatMul in ONNX Runtime: interleaved runs, median time ratio per configuration.

    python tools/bench_decompose.py [--sizes 1024 4096] [--blocks 2 8] [--batch 64] [--reps 30]

Each weight is block-diagonal with equal blocks; "hidden" shuffles rows and columns (Gather + unpermute
forms), "contiguous" leaves them in place (Slice forms, no unpermute). Ratios above 1 mean the decomposed
model is faster. Absolute times are not printed: this machine is shared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnx_decomp


def block_model(d: int, k: int, hidden: bool, rng) -> onnx.ModelProto:
    w = np.kron(np.eye(k), np.ones((d // k, d // k))) * rng.standard_normal((d, d))
    if hidden:
        w = w[rng.permutation(d)][:, rng.permutation(d)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "B"], ["y"])], "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d])],
        [numpy_helper.from_array(w.T.astype(np.float32), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def median_ratio(dense, decomposed, feed, reps: int) -> float:
    """Median over interleaved pairs of dense time / decomposed time."""
    for s in (dense, decomposed):
        s.run(None, feed)
    ratios = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dense.run(None, feed)
        t1 = time.perf_counter()
        decomposed.run(None, feed)
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / (t2 - t1))
    return float(np.median(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"ONNX Runtime {ort.__version__}, CPU, 2 threads, batch {args.batch}")
    print(f"{'d':>6} {'blocks':>6} {'layout':>10} {'MACs/':>6} {'speedup':>8}")
    for d in args.sizes:
        feed = {"x": rng.standard_normal((args.batch, d)).astype(np.float32)}
        for k in args.blocks:
            for hidden in (True, False):
                model = block_model(d, k, hidden, rng)
                rewritten, report = onnx_decomp.decompose(model, check=1, min_flop_reduction=1.0)
                ratio = median_ratio(session(model), session(rewritten), feed, args.reps)
                print(f"{d:>6} {k:>6} {'hidden' if hidden else 'contiguous':>10} "
                      f"{report.nodes[0].flop_reduction:>6.1f} {ratio:>7.2f}x")


if __name__ == "__main__":
    main()
