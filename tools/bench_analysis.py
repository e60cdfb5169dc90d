"""Throughput and peak memory of the per-tensor analysis, streamed over a synthetic 100M-parameter model.

    python tools/bench_analysis.py [--size 4096] [--tensors 6]

Each tensor is drawn from torch-linear's null with 2% of its entries planted far outside it, analysed
exactly as `onnx-decomp analyze` does (p-values, Storey pi0, Benjamini-Hochberg at 0.05, components of the
confirmed support), then dropped before the next is made. Prints seconds and parameters per second per
tensor, and the process's peak resident memory against one tensor's float32 size.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from onnx_decomp.stats.criterion import bh_threshold, storey_pi0
from onnx_decomp.stats.null_models import parse_null_spec
from onnx_decomp_passes import plan_from_support


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tensors", type=int, default=6)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    spec, n = parse_null_spec("torch-linear"), args.size
    baseline = peak_rss_mib()
    print(f"{args.tensors} tensors of {n}x{n} = {args.tensors * n * n / 1e6:.0f}M parameters; "
          f"one tensor is {n * n * 4 / 2**20:.0f} MiB as float32; baseline RSS {baseline:.0f} MiB")
    total_time = 0.0
    for index in range(args.tensors):
        bound = 1 / np.sqrt(n)
        w = rng.uniform(-bound, bound, (n, n)).astype(np.float32)
        planted = rng.random((n, n)) < 0.02
        w[planted] *= 3
        del planted
        start = time.perf_counter()
        null = spec.build(w)
        p = null.sf_abs(w.astype(np.float64))
        confirmed = p <= bh_threshold(p[p <= 0.05], p.size, 0.05)
        pi0 = storey_pi0(p)
        components = len(plan_from_support(confirmed).branches)
        elapsed = time.perf_counter() - start
        total_time += elapsed
        print(f"tensor {index}: {elapsed:.2f} s, {n * n / elapsed / 1e6:.1f}M params/s, pi0 {pi0:.3f}, "
              f"confirmed {confirmed.mean():.4f}, {components} components")
        del w, p, confirmed
    total = args.tensors * n * n
    peak = peak_rss_mib()
    print(f"total {total / 1e6:.0f}M params in {total_time:.1f} s: {total / total_time / 1e6:.1f}M params/s; "
          f"peak RSS {peak:.0f} MiB ({(peak - baseline) / (n * n * 4 / 2**20):.1f}x one float32 tensor "
          "above baseline)")


if __name__ == "__main__":
    main()
