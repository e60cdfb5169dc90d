"""Measure the constants of the cost model (``onnx_decomp.cost.estimate``) on this machine.

    python tools/calibrate_cost.py                     # one thread, its CPU time (steady on a busy machine)
    python tools/calibrate_cost.py --threads 2 --clock wall

Each constant comes from one small graph timed in ONNX Runtime CPU (median of ~10 ms samples, the time of a
one-MatMul graph subtracted, so only the work is left): per-node dispatch from 41 chained [1, 64] x [64, 64]
MatMul nodes; copy bandwidth from a [256, 8, 256] Transpose to
[8, 256, 256] (the block forms move 1 KB runs); GEMM throughput from a pre-packed
[256, 1024] x [1024, 1024] MatMul; packing a 3-D weight at every run from a [8, 64, 256] x [8, 256, 256]
batched MatMul (its time beyond the GEMM at that throughput); the fixed cost of an
Einsum ``...ki,kio->...ko`` from a [1, 8, 16] x [8, 16, 16] one; weight streaming from
a [1, 4096] x [4096, 4096] MatMul; per-element costs of Gather (last axis) and GatherElements on [64, 2048].
Prints a ``CostModel(...)`` line to paste into ``MEASURED``.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_decomp.config import SessionConfig
from onnx_decomp.cost.timing import interleaved_times
from onnx_decomp.runtime.sessions import make_session


def graph(nodes, x_shape, inits=()):
    g = helper.make_graph(nodes, "calibrate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v), name) for name, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def run_us(model, x_shape, config: SessionConfig, clock: str, budget_s: float = 1.0) -> float:
    """Median microseconds per run over interleaved rounds of about 10 ms (``cost.timing``)."""
    session = make_session(model, config)
    feed = {"x": np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)}
    times = interleaved_times([session], feed, budget_s, 10_000, clock=clock)
    return float(np.median(times)) * 1e6


def matmul_chain(n: int):
    """``n`` MatMul nodes of [1, 64] x [64, 64] one after the other: almost nothing but dispatch."""
    names = ["x", *[f"r{i}" for i in range(n - 1)], "y"]
    w = np.eye(64, dtype=np.float32)
    return graph([helper.make_node("MatMul", [a, "W"], [b]) for a, b in zip(names, names[1:])], [1, 64],
                 [("W", w)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                        help="cpu (default, needs --threads 1): the thread's CPU time, steady on a busy machine")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1")
    config = SessionConfig("cpu", threads=args.threads, spin=False)
    rng = np.random.default_rng(0)
    base = run_us(matmul_chain(1), [1, 64], config, args.clock)
    node_us = (run_us(matmul_chain(41), [1, 64], config, args.clock) - base) / 40

    def work(model, x_shape):
        return max(run_us(model, x_shape, config, args.clock) - base, 1e-3)

    transpose = work(graph([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2])], [256, 8, 256]),
                     [256, 8, 256])
    copy_gbps = 2 * 4 * 256 * 8 * 256 / transpose / 1e3
    dense = rng.standard_normal((1024, 1024)).astype(np.float32)
    packed = work(graph([helper.make_node("MatMul", ["x", "B"], ["y"])], [256, 1024], [("B", dense)]), [256, 1024])
    batched = rng.standard_normal((8, 256, 256)).astype(np.float32)
    unpacked = work(graph([helper.make_node("MatMul", ["x", "B"], ["y"])], [8, 64, 256], [("B", batched)]),
                    [8, 64, 256])
    gemm_gflops = 2 * 256 * 1024 * 1024 / packed / 1e3
    packing = max(unpacked - 2e-3 * 8 * 64 * 256 * 256 / gemm_gflops, 1e-3)  # the time beyond the GEMM itself
    small = rng.standard_normal((8, 16, 16)).astype(np.float32)
    einsum = work(graph([helper.make_node("Einsum", ["x", "B"], ["y"], equation="...ki,kio->...ko")], [1, 8, 16],
                        [("B", small)]), [1, 8, 16])
    big = rng.standard_normal((4096, 4096)).astype(np.float32)
    stream = work(graph([helper.make_node("MatMul", ["x", "B"], ["y"])], [1, 4096], [("B", big)]), [1, 4096])
    perm = rng.permutation(2048).astype(np.int64)
    gather = work(graph([helper.make_node("Gather", ["x", "p"], ["y"], axis=-1)], [64, 2048], [("p", perm)]),
                  [64, 2048])
    elements = work(graph([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Expand", ["p", "s"], ["e"]),
                           helper.make_node("GatherElements", ["x", "e"], ["y"], axis=-1)], [64, 2048],
                          [("p", perm[None])]), [64, 2048])
    print(f"ONNX Runtime {ort.__version__} CPU, {args.threads} intra-op threads, {args.clock} clock; "
          f"one-node run {base:.1f} us")
    print(f"CostModel(node_us={node_us:.2f}, copy_gbps={copy_gbps:.1f}, "
          f"weight_gbps={4 * 4096 * 4096 / stream / 1e3:.1f}, "
          f"gemm_gflops={gemm_gflops:.1f}, "
          f"pack_gbps={4 * 8 * 256 * 256 / packing / 1e3:.1f}, einsum_us={einsum:.1f}, "
          f"gather_ns={gather * 1e3 / (64 * 2048):.2f}, gather_elements_ns={elements * 1e3 / (64 * 2048):.2f})")


if __name__ == "__main__":
    main()
