"""Annealing the bundled char LM in one process against two Ray workers, and two Ray workers one of which is
killed mid-run: time and whether the results are identical.

    python tools/bench_ray.py [--families units,lowrank] [--tolerance 0.05] [--kill-after 20] [--rounds 1]

Each run is a fresh process: ``onnx_decomp.anneal`` on ``models/char_lm/model.onnx`` with its ``calib.npz``,
``--metric top1``, the cost gate, batches of 64 windows, ``--families`` (default units and low rank: the
families that pay on a dense-trained transformer, design.md section 7c); ``--workers 2`` starts a local
Ray instance (its start-up counted in the time); the kill run starts the same cluster first and kills one
fold worker (SIGKILL) once it has used ``--kill-after`` seconds of CPU. Printed: wall-clock seconds of each
run (``--rounds`` interleaved rounds, medians), the speedup over one process, whether the written model
and every step's measured fidelity equal the one-process run's, and the cores the one-process run kept busy
on average (its CPU seconds over its wall-clock seconds, process start included): the machine's cores over
that figure bound what any parallel run on this machine can gain.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL, CALIB = ROOT / "models/char_lm/model.onnx", ROOT / "models/char_lm/calib.npz"
MODES = ("one process", "2 Ray workers", "2 Ray workers, one killed")


def run(mode: str, out: Path, families: tuple, tolerance: float, kill_after: float) -> None:
    """One run in this process; writes ``out`` (the model) and ``out.json`` (time, steps, pids)."""
    import onnx_decomp
    from onnx_decomp.config import ClusterConfig
    from onnx_decomp.distributed.cluster import Cluster, kill_when_busy, pids

    config = onnx_decomp.AnnealConfig(metric="top1", tolerance=tolerance, families=families)
    options = dict(config=config, gate="cost", input_shapes={"tokens": [64, 128]})
    start = time.perf_counter()
    before = after = []
    if mode == MODES[0]:
        model, report = onnx_decomp.anneal(str(MODEL), str(CALIB), **options)
    elif mode == MODES[1]:
        model, report = onnx_decomp.anneal(str(MODEL), str(CALIB), cluster=ClusterConfig(workers=2), **options)
    else:
        with Cluster(ClusterConfig(workers=2)) as cluster:
            before = pids(cluster.fold_workers)
            kill_when_busy(before[1], kill_after)
            model, report = onnx_decomp.anneal(str(MODEL), str(CALIB), cluster=cluster, **options)
            after = pids(cluster.fold_workers)
    seconds = time.perf_counter() - start
    out.write_bytes(model.SerializeToString())
    out.with_suffix(".json").write_text(json.dumps({
        "seconds": seconds, "steps": [s.candidate.fidelity for s in report.steps], "pids": [before, after],
        "mac_reduction": report.final.mac_reduction, "validation": report.final.validation}))


def _cpu_seconds() -> float:
    """User and system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="units,lowrank")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--kill-after", type=float, default=20.0, help="worker CPU seconds before the kill")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="0,1,2", help="which runs, by index into " + ", ".join(MODES))
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)  # (mode index, output): the measuring process
    args = parser.parse_args()
    families = tuple(args.families.split(","))
    if args.run:
        return run(MODES[int(args.run[0])], Path(args.run[1]), families, args.tolerance, args.kill_after)
    chosen = [int(i) for i in args.modes.split(",")]
    results: dict[int, list] = {i: [] for i in chosen}
    busy = []  # cores the one-process runs kept busy
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
        for round_ in range(args.rounds):
            for i in chosen:
                out = Path(folder) / f"{i}-{round_}.onnx"
                cpu, start = _cpu_seconds(), time.perf_counter()
                subprocess.run([sys.executable, __file__, "--run", str(i), str(out), "--families", args.families,
                                "--tolerance", str(args.tolerance), "--kill-after", str(args.kill_after)],
                               check=True)
                if i == 0:
                    busy.append((_cpu_seconds() - cpu) / (time.perf_counter() - start))
                results[i].append((json.loads(out.with_suffix(".json").read_text()), out.read_bytes()))
                print(f"round {round_}: {MODES[i]}: {results[i][-1][0]['seconds']:.1f} s", flush=True)
        base = statistics.median(r["seconds"] for r, _ in results[chosen[0]])
        reference = results[chosen[0]][0]
        print(f"\nchar LM, --families {args.families}, --metric top1 --tolerance {args.tolerance:g}: "
              f"{reference[0]['mac_reduction']:.2f}x fewer MACs, held-out top-1 {reference[0]['validation']:.4f}")
        print("| run | seconds (median) | speedup | identical model and steps |\n|---|---|---|---|")
        for i in chosen:
            seconds = statistics.median(r["seconds"] for r, _ in results[i])
            same = all(data == reference[1] and r["steps"] == reference[0]["steps"] for r, data in results[i])
            killed = [r["pids"] for r, _ in results[i] if r["pids"][0]]
            note = "; worker pids before/after: " + ", ".join(f"{b}->{a}" for b, a in killed) if killed else ""
            print(f"| {MODES[i]} | {seconds:.1f} | {base / seconds:.2f}x | {same}{note} |")
        if busy:
            cores, machine = statistics.median(busy), os.cpu_count()
            print(f"\none process kept {cores:.2f} of the {machine} cores busy on average (median): no parallel run "
                  f"on this machine can be more than {machine / cores:.2f}x faster than it")


if __name__ == "__main__":
    main()
