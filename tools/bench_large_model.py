"""Time and peak memory of `onnx-decomp decompose` on a model above the 2 GiB protobuf limit.

    python tools/bench_large_model.py [--layers 8] [--width 8192] [--blocks 8] [--keep]

Builds, in a temporary folder, a chain of ``--layers`` MatMul -> Relu layers of ``width x width`` float32
weights in external data (8 x 8192^2 x 4 bytes = 2.0 GiB), each block-diagonal with ``--blocks`` blocks
under hidden row and column permutations; runs the CLI on it in a child process (FLOP gate, one validation
set, output with external data) and prints the wall time and the child's peak resident memory as a multiple
of the weight bytes. The folder is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onnx_decomp_models.synthetic import block_chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="onnx-decomp-large-"))
    try:
        start = time.perf_counter()
        path, weight_bytes = block_chain(folder, args.layers, args.width, args.blocks)
        print(f"built {args.layers} x {args.width}^2 float32 = {weight_bytes / 2**30:.2f} GiB of weights "
              f"in {time.perf_counter() - start:.0f} s ({folder})")
        command = [sys.executable, "-m", "onnx_decomp.cli", "decompose", str(path), str(folder / "out.onnx"),
                   "--gate", "flops", "--check", "1", "--input-shape", f"x:4,{args.width}",
                   "--save-as-external-data"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(result.stdout[-1500:] + result.stderr[-1500:])
        print(f"exit {result.returncode}; decompose took {elapsed:.0f} s; peak memory {peak / 2**30:.2f} GiB = "
              f"{peak / weight_bytes:.2f}x the weight bytes")
        out = folder / "out.onnx"
        if out.exists():
            print(f"output: {out.stat().st_size / 2**20:.1f} MiB + {(folder / 'out.onnx.data').stat().st_size / 2**20:.0f} "
                  f"MiB external data")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
