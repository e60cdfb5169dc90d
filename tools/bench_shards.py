"""A dense chain against its shards in one process and as Ray actors: where the paper's parallel inference pays.

    python tools/bench_shards.py [--widths 256,1024,2048,4096] [--batches 1,64,256] [--groups 2] [--layers 2]
                                 [--rounds 7]

Each model is a planted chain (``onnx_decomp_models.synthetic.independent_chain``): ``--layers`` x (MatMul -> Relu)
over ``x [N, width]``, each weight block-diagonal with ``--groups`` blocks under one hidden permutation per feature
space, so that the groups are independent end to end. Its plans are the components of the nonzero patterns, its shards written by ``write_shards``. Per
(width, batch), three ways are timed in interleaved rounds (each round runs each way ``calls`` times in turn,
``calls`` sized to about 0.2 s; medians of rounds of medians): the dense model in one ONNX Runtime session and
the shards in one process (a session each, run in turn), both with ONNX Runtime's default threads (one per
core); the shards in one process on one thread each; and the shards as Ray actors (one per shard, one thread
each, a local Ray instance of one CPU per shard; the input sent, the calls issued at once, the outputs
fetched and merged, all counted). Also timed: Ray's round trip (every shard actor called at once, doing
nothing). Printed: per-call times relative to dense, the actors against the shards in one process, the round
trip, Ray's cost (the actors' time less the shards' one-thread time over k, what perfectly parallel shards
would take) against the round trip, and the break-even: running at once, the actors save at most (k - 1) / k of
the shards' one-thread time, so they pay only where that exceeds Ray's cost, at least k / (k - 1) round trips;
against the shards on every core only where ONNX Runtime's own threads do worse still.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnx_decomp.config import ClusterConfig, SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.distributed.cluster import Cluster, import_ray
from onnx_decomp.distributed.inference import ShardRunner
from onnx_decomp.distributed.shards import write_shards
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp_models.synthetic import independent_chain
from onnx_decomp_passes import plan_from_support

SESSION = SessionConfig(spin=False)  # sessions in turn in one process: idle threads do not spin
ONE_THREAD = SessionConfig(threads=1)


def per_call(call, calls: int) -> float:
    """The median seconds of ``calls`` calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: onnx.ModelProto, width: int, batch: int, rounds: int, folder: Path, cluster: Cluster) -> dict:
    """Median seconds per call of each way and of Ray's round trip (module rule); the outputs checked equal."""
    plans = {op.site: plan_from_support(op.matrix() != 0) for op in ModelContext.load(model).ops}
    manifest = write_shards(model, plans, folder)
    x = np.random.default_rng(1).standard_normal((batch, width)).astype(np.float32)
    dense = make_session(model, SESSION)
    with ShardRunner(manifest, "local", SESSION) as local, ShardRunner(manifest, "local", ONE_THREAD) as local1, \
            ShardRunner(manifest, "ray", cluster=cluster) as actors:
        ways = {"dense": lambda: dense.run(None, {"x": x})[0], "local": lambda: local(x), "local1": lambda: local1(x),
                "ray": lambda: actors(x), "round trip": actors.ping}
        expected = ways["dense"]()
        for name in ("local", "local1", "ray"):
            np.testing.assert_allclose(ways[name](), expected, rtol=1e-4, atol=1e-4)
        calls = {name: max(5, int(0.2 / max(per_call(way, 3), 1e-6))) for name, way in ways.items()}
        times: dict[str, list] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, way in ways.items():
                times[name].append(per_call(way, calls[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="256,1024,2048,4096")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    k = args.groups
    import_ray(local=True)
    print(f"{args.layers} x (MatMul -> Relu), {k} groups; medians of {args.rounds} interleaved rounds; "
          f"times relative to dense (lower is faster)")
    print("local: the shards in one process on every core, local1: on one thread each, ray: as Ray actors")
    print("trip: Ray's round trip; cost: the actors' time less local1's over k, in trips")
    print(f"{'width':>6} {'batch':>6} {'dense ms':>9} {'local/dense':>12} {'local1/dense':>13} {'ray/dense':>10} "
          f"{'ray/local':>10} {'ray/local1':>11} {'trip ms':>8} {'cost/trip':>10} {'local1/trip':>12}")
    rows = []
    with Cluster(ClusterConfig(workers=k)) as cluster, tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        for width in (int(w) for w in args.widths.split(",")):
            model = independent_chain(width, k, args.layers)
            for batch in (int(b) for b in args.batches.split(",")):
                t = measure(model, width, batch, args.rounds, Path(tmp) / f"{width}-{batch}", cluster)
                work, cost = t["local1"] / t["round trip"], (t["ray"] - t["local1"] / k) / t["round trip"]
                rows.append((width, batch, t, work))
                print(f"{width:>6} {batch:>6} {t['dense'] * 1e3:>9.3f} {t['local'] / t['dense']:>12.2f} "
                      f"{t['local1'] / t['dense']:>13.2f} {t['ray'] / t['dense']:>10.2f} "
                      f"{t['ray'] / t['local']:>10.2f} {t['ray'] / t['local1']:>11.2f} "
                      f"{t['round trip'] * 1e3:>8.3f} {cost:>10.1f} {work:>12.1f}", flush=True)
    trips = [t["round trip"] for _, _, t, _ in rows]
    print(f"Ray's round trip ({k} actors called at once, doing nothing): "
          f"median {statistics.median(trips) * 1e3:.3f} ms (from {min(trips) * 1e3:.3f} to {max(trips) * 1e3:.3f})")
    print(f"break-even: the actors save at most {k - 1}/{k} of the shards' one-thread time, so they pay only where "
          f"that exceeds Ray's cost, at least {k / (k - 1):.1f} round trips (columns local1/trip, cost/trip)")
    for name, label in (("local1", "on one thread each"), ("local", "on every core"), ("dense", "the dense model")):
        paying = [(width, batch, work) for width, batch, t, work in rows if t["ray"] < t[name]]
        print(f"measured: the actors beat {'the shards in one process ' if name != 'dense' else ''}{label} at " +
              (", ".join(f"width {w} batch {b} ({work:.1f} trips)" for w, b, work in paying) or "no size measured"))


if __name__ == "__main__":
    main()
