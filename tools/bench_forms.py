"""The README's forms table: every rewrite form of a block-diagonal MatMul against dense, in ONNX Runtime.

    python tools/bench_forms.py                      # d = 1024, 2048, 4096; k = 2, 4, 8, 16; batch 1, 64, 256
    python tools/bench_forms.py --quick              # d = 1024, 2048; k = 8; batch 1, 64
    python tools/bench_forms.py --sizes 2048 --blocks 8 --batches 1 64 --layouts hidden
    python tools/bench_forms.py --mlp                # 4-layer MLP, d = 2048, matching 8-block partitions

Each model is one MatMul ``y = x @ W.T`` with ``W [d, d]`` block-diagonal in ``k`` equal blocks. "hidden"
shuffles W's rows and columns: the model's input and output are graph input and output, so no permutation can
be folded and the block forms gather at run time; "contiguous" leaves them in place, which is also what
folding gives a hidden permutation between two weighted layers. Per batch size all models run interleaved in
one process (``onnx_decomp.cost.timing.interleaved_times``, median of per-round ratios, ONNX Runtime CPU,
``--threads`` intra-op threads, idle threads blocking unless ``--spin``; ``--clock cpu``: the timing thread's
CPU time with one thread, which the machine's other work does not inflate). Columns: the FLOP reduction, the
speedup of each form, and "decompose": what ``onnx-decomp decompose --batch B`` (time gate, cost-model form)
writes, its form (or "dense" when the gate keeps the node) and its efficiency (speedup / FLOP reduction). With
``--mlp``: the MLP decomposed by ``onnx-decomp decompose --batch 1,64``, with ``--tune``, and with branches
only, each timed by ``onnx-decomp bench``'s driver.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnx_decomp
from onnx_decomp.config import FORMS, GateConfig, SessionConfig, ValidationConfig
from onnx_decomp.cost.timing import interleaved_times
from onnx_decomp.drivers.bench import bench
from onnx_decomp.runtime.sessions import make_session

ANY = dict(min_flop_reduction=1.0)
UNCHECKED = ValidationConfig(check=1)


def block_weight(d: int, k: int, hidden: bool, rng) -> np.ndarray:
    w = (np.kron(np.eye(k), np.ones((d // k, d // k))) * rng.standard_normal((d, d)) / np.sqrt(d / k))
    return (w[rng.permutation(d)][:, rng.permutation(d)] if hidden else w).astype(np.float32)


def one_matmul(w: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[0]])],
        [numpy_helper.from_array(w.T.copy(), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def forms_table(args, config: SessionConfig) -> None:
    rng = np.random.default_rng(0)
    rows = {b: [] for b in args.batches}
    for d in args.sizes:
        for k in args.blocks:
            for layout in args.layouts:
                dense = one_matmul(block_weight(d, k, layout == "hidden", rng))
                rewritten = {form: onnx_decomp.decompose(dense, gate=GateConfig("flops", forms=(form,), **ANY),
                                                         validation=UNCHECKED)[0] for form in args.forms}
                sessions = [make_session(m, config) for m in [dense, *rewritten.values()]]
                for batch in args.batches:
                    chosen, report = onnx_decomp.decompose(dense, input_shapes={"x": [batch, d]}, session=config,
                                                           gate=GateConfig(batches=(batch,)), validation=UNCHECKED)
                    node = report.nodes[0]
                    feed = {"x": rng.standard_normal((batch, d)).astype(np.float32)}
                    times = interleaved_times([*sessions, make_session(chosen, config)], feed, args.budget, 1000,
                                              clock=args.clock)
                    ratios = np.median(times[:, :1] / times[:, 1:], axis=0)
                    form = node.form if node.action == "rewrite" else "dense"
                    rows[batch].append((d, k, layout, float(k), *ratios[:-1], form, ratios[-1], ratios[-1] / k))
                    print(f"  d={d} k={k} {layout} batch={batch}: " + " ".join(f"{r:.2f}" for r in ratios), flush=True)
    for batch, table in rows.items():
        print(f"\nBatch {batch}:\n")
        print("| d | k | layout | MACs / | " + " | ".join(args.forms) + " | decompose | speedup | efficiency |")
        print("|---" * (len(args.forms) + 7) + "|")
        for d, k, layout, reduction, *rest in table:
            speedups, (form, ratio, efficiency) = rest[:-3], rest[-3:]
            print(f"| {d} | {k} | {layout} | {reduction:.1f} | " + " | ".join(f"{s:.2f}x" for s in speedups) +
                  f" | {form} | {ratio:.2f}x | {efficiency:.2f} |")


def mlp(d: int, k: int, layers: int, rng) -> onnx.ModelProto:
    """``layers`` Gemm + Relu, every weight in the same k blocks of one shuffled partition of the d features."""
    partition = rng.permutation(np.repeat(np.arange(k), d // k))
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (partition[:, None] == partition[None, :]) * rng.standard_normal((d, d)) / np.sqrt(d / k)
        nodes += [helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"g{i}"], name=f"fc{i}", transB=1),
                  helper.make_node("Relu", [f"g{i}"], [f"h{i}"])]
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(d)).astype(np.float32), f"b{i}")]
        x = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def mlp_table(args, config: SessionConfig) -> None:
    dense = mlp(2048, 8, 4, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: Path(folder) / f"{name}.onnx" for name in ("dense", "decompose", "tune", "branches")}
        onnx.save(dense, paths["dense"])
        gates = {"decompose": GateConfig(batches=tuple(args.batches)),
                 "tune": GateConfig(batches=tuple(args.batches), tune=True),
                 "branches": GateConfig(batches=tuple(args.batches), forms=("branches",))}
        for name, gate in gates.items():
            model, report = onnx_decomp.decompose(paths["dense"], gate=gate, session=config, validation=UNCHECKED)
            print(f"{name}: forms {[n.form for n in report.nodes]}, {report.after.nodes} nodes")
            onnx.save(model, paths[name])
            print(bench(paths["dense"], paths[name], args.batches, config, budget_s=args.budget,
                        clock=args.clock).format())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--layouts", nargs="+", choices=["hidden", "contiguous"], default=["hidden", "contiguous"])
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of interleaved rounds per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spin", action="store_true", help="idle intra-op threads spin (SessionConfig.spin)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the timing thread's CPU time with one intra-op thread (steady on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="d = 1024, 2048; k = 8; batch 1, 64")
    parser.add_argument("--mlp", action="store_true", help="the 4-layer MLP end to end instead")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.blocks, args.batches = [1024, 2048], [8], [1, 64]
    if args.clock == "cpu":
        args.threads = 1
    config = SessionConfig("cpu", threads=args.threads, spin=args.spin)
    print(f"ONNX Runtime {ort.__version__}, CPU, {args.threads} intra-op threads"
          f"{', spinning' if args.spin else ', not spinning'}, {args.clock} clock")
    if args.mlp:
        mlp_table(args, config)
    else:
        forms_table(args, config)


if __name__ == "__main__":
    main()
