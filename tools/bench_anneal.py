"""Annealing a trained dense model without any training: fidelity, MACs and speed at several tolerances.

    python tools/bench_anneal.py [--model models/digits_mlp] [--metric top1] [--tolerances 0.001 0.01 0.05]

For every tolerance, with and without refit: ``onnx_decomp.anneal`` on the model folder's ``calib.npz``
(half tuning, half held out, as the CLI splits it), the time gate at batch ``--batch``; then, on the held-out
half: top-1 disagreement with the dense model (the gate's metric with ``--metric top1``), accuracy against
``labels.npz`` (dense and annealed), the MatMul MAC reduction of the annealed structure, and the rewritten
model's speed against the dense one in ONNX Runtime CPU (median of interleaved runs, at ``--batch`` and at 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import onnx_decomp
from onnx_decomp.config import AnnealConfig, SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.timing import median_speedup
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp.search.calibration import calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/digits_mlp"))
    parser.add_argument("--metric", default="top1")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.001, 0.01, 0.05])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    path, calib, labels = args.model / "model.onnx", args.model / "calib.npz", args.model / "labels.npz"
    ctx = ModelContext.load(path)
    (name,), (output,) = [s.name for s in ctx.specs], [o.name for o in ctx.proto.graph.output]
    held = calibration(ctx, AnnealConfig(), calib, labels).held_out  # the split anneal uses
    x, y = held.inputs[name], held.labels[output]
    dense = make_session(ctx.proto, SessionConfig("cpu"))
    dense_out = dense.run(None, {name: x})[0]
    big, one = {name: np.resize(x, (args.batch, *x.shape[1:]))}, {name: x[:1]}
    print(f"{path}: {len(x)} held-out samples, dense accuracy {np.mean(dense_out.argmax(1) == y):.4f}; "
          f"gate: time at batch {args.batch}")
    print(f"| tolerance ({args.metric}) | refit | MACs / | top-1 disagreement | accuracy | blocks per weight | "
          f"speed batch {args.batch} | speed batch 1 | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tolerance in args.tolerances:
        for refit in (True, False):
            start = time.perf_counter()
            model, report = onnx_decomp.anneal(path, calib, labels=labels, metric=args.metric, tolerance=tolerance,
                                               refit=refit, input_shapes={name: [args.batch, *x.shape[1:]]},
                                               session="cpu")
            seconds = time.perf_counter() - start
            session = make_session(model, SessionConfig("cpu"))
            out = session.run(None, {name: x})[0]
            speeds = [median_speedup(dense, session, feed, budget_s=3.0) for feed in (big, one)]
            blocks = ", ".join(f"{site.weight} {len(p.branches)}" for site, p in report.plans.items()) or "-"
            print(f"| {tolerance:g} | {'on' if refit else 'off'} | {report.final.mac_reduction:.2f} | "
                  f"{np.mean(out.argmax(1) != dense_out.argmax(1)):.4f} | {np.mean(out.argmax(1) == y):.4f} | "
                  f"{blocks} | {speeds[0]:.2f}x | {speeds[1]:.2f}x | {seconds:.1f} |")


if __name__ == "__main__":
    main()
