"""Dense vs decomposed in ONNX Runtime: interleaved runs, median time ratio.

    python tools/bench_decompose.py [--sizes 1024 4096] [--blocks 2 8] [--batch 64] [--reps 30]
    python tools/bench_decompose.py --model models/digits_blocked/model.onnx [--batch 64]

Without --model: synthetic single-MatMul models, rewritten with the FLOP gate only.
With --model: the whole model, decomposed as `onnx-decomp decompose` does (timing gate), inputs with
their first dim set to --batch. Each synthetic weight is block-diagonal with equal blocks; "hidden" shuffles rows and columns (Gather + unpermute
forms), "contiguous" leaves them in place (Slice forms, no unpermute). Ratios above 1 mean the decomposed
model is faster. Absolute times are not printed: this machine is shared.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnx_decomp
from onnx_decomp.config import GateConfig, SessionConfig, ValidationConfig
from onnx_decomp.cost.timing import median_speedup
from onnx_decomp.io.shapes import input_specs
from onnx_decomp.runtime.sessions import make_session, random_inputs


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


CPU_2_THREADS = SessionConfig("cpu", threads=2)


def session(model: onnx.ModelProto):
    return make_session(model, CPU_2_THREADS)


def bench_model(path: str, batch: int, reps: int) -> None:
    model = onnx.load(path)
    shapes = {spec.name: (batch, *spec.shape[1:]) for spec in input_specs(model)}
    rewritten, report = onnx_decomp.decompose(model, input_shapes=shapes)
    print(report.format())
    feed = random_inputs(input_specs(model, shapes), np.random.default_rng(0))
    ratio = median_speedup(session(model), session(rewritten), feed, budget_s=float("inf"), max_pairs=reps)
    print(f"whole model, batch {batch}: decomposed runs {ratio:.2f}x the speed of dense")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="time this ONNX model instead of synthetic weights")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    print(f"ONNX Runtime {ort.__version__}, CPU, 2 threads, batch {args.batch}")
    if args.model:
        return bench_model(args.model, args.batch, args.reps)
    rng = np.random.default_rng(0)
    print(f"{'d':>6} {'blocks':>6} {'layout':>10} {'MACs/':>6} {'speedup':>8}")
    for d in args.sizes:
        feed = {"x": rng.standard_normal((args.batch, d)).astype(np.float32)}
        for k in args.blocks:
            for hidden in (True, False):
                model = block_model(d, k, hidden, rng)
                rewritten, report = onnx_decomp.decompose(model, gate=GateConfig("flops", min_flop_reduction=1.0),
                                                          validation=ValidationConfig(check=1))
                ratio = median_speedup(session(model), session(rewritten), feed, budget_s=float("inf"),
                                       max_pairs=args.reps)
                print(f"{d:>6} {k:>6} {'hidden' if hidden else 'contiguous':>10} "
                      f"{report.nodes[0].flop_reduction:>6.1f} {ratio:>7.2f}x")


if __name__ == "__main__":
    main()
