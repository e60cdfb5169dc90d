"""The stages both benchmark pipelines run (``tools/char_lm_pipeline.py``, ``tools/minilm_pipeline.py``); a
pipeline is a ``Benchmark``: its model, data, scores and PyTorch side.

Stages, each reading what the earlier ones wrote under ``--work``; every model is an entry of
``models.json`` (``comparison.Manifest``), and a stage leaves an entry whose file is there as it is:
- ``dense``: the dense model and ONNX Runtime's dynamic int8 per tensor (``int8``), per channel
  (``int8-channel``) and ``int4`` of it; the stronger int8 scheme (by the model's quality) is "+int8" from
  here on, for ours and the peers alike.
- ``anneal``: ours, ``onnx_decomp.anneal`` at each of ``--tolerances``, float and with ``quantize`` set to the
  stronger int8 scheme (its budget covers the quantization); families ``units`` and ``lowrank``.
- ``finetune``: ours + ``--steps``: each annealed structure taken on in PyTorch (``apply_structure`` on the
  masked, refitted weights), fine-tuned, exported; the quantized run's structure quantized after.
- ``control``: the dense model + ``--steps``.
- ``peers``: at each float anneal's weight MACs (``comparison.budget_after``): whitened low rank, plain SVD
  and structured pruning, each post-training and + ``--steps`` (``--post-training``: not fine-tuned, the
  stage's long part), each also + int8.
- ``bench``: every model written so far timed side by side (``comparison.bench``), alone re-runnable.
- ``report``: the table (``table.md``), the trade-off figure, the targets and where ours loses.
"""

from __future__ import annotations

import abc
import argparse
import json
import logging
import pickle
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping, Optional

import numpy as np
import onnx
from torch import nn

import onnx_decomp
from onnx_decomp.config import AnnealConfig, GateConfig
from onnx_decomp.runtime.quantize import quantize
from onnx_decomp.torch import apply_structure, factorize
from onnx_decomp_models import comparison
from onnx_decomp_models.comparison import OURS, PEERS, Entry, Manifest, Point

DENSE = "dense"
FAMILIES = ("units", "lowrank")


class Benchmark(abc.ABC):
    """One model's side of the stages: its files, data, scores and PyTorch side."""

    title: str  # the figure's title
    work: Path  # the default work folder
    dense_path: Path  # the dense ONNX model
    batches: tuple[int, int]  # speed at batch 1 and a larger one
    quality: str  # the score the frontier and the figure read (higher is better)
    quality_label: str
    columns: tuple[str, ...]  # the table's score columns
    metric: str  # annealing's metric
    tolerances: tuple[float, ...]
    flow: ModuleType  # the PyTorch side: model(), finetune(model, steps, structure), export_model(model, path),
    # prune_to(model, budget) -> (heads, units), block_layers(model) -> {path: (out, in)}

    @abc.abstractmethod
    def score(self, model: onnx.ModelProto) -> dict[str, float]:
        """The model's scores (at least ``quality``)."""

    @abc.abstractmethod
    def cells(self, scores: dict, dense: dict) -> list[str]:
        """The table's score columns of ``scores`` next to the dense model's."""

    @abc.abstractmethod
    def sequence(self) -> dict[str, np.ndarray]:
        """One real input (batch 1) keyed by input name, for MAC counts."""

    @abc.abstractmethod
    def bench_inputs(self) -> dict[str, np.ndarray]:
        """Real inputs for timing, at least ``max(batches)`` rows."""

    @abc.abstractmethod
    def calibration(self) -> dict[str, np.ndarray]:
        """Annealing's calibration inputs."""

    @abc.abstractmethod
    def anneal_options(self) -> dict:
        """Keyword arguments of ``onnx_decomp.anneal`` beyond the calibration, config and gate; at least
        ``input_shapes``."""

    def calibration_batches(self) -> list[dict[str, np.ndarray]]:
        """The calibration inputs in batches of the first dim of ``anneal_options()["input_shapes"]``."""
        calib, shapes = self.calibration(), self.anneal_options()["input_shapes"]
        size, rows = next(iter(shapes.values()))[0], len(next(iter(calib.values())))
        return [{name: array[s:s + size] for name, array in calib.items()} for s in range(0, rows, size)]

    def peer(self, method: str, model: nn.Module, budget: float) -> str:
        """Apply peer ``method`` (``comparison.PEERS``) to ``model`` (the dense one) in place within the weight
        MAC ``budget``; what it kept, in words."""
        if method == "pruned":
            heads, units = self.flow.prune_to(model, budget)
            return f"{heads} heads and {units} FFN units per block"
        ranks = comparison.ranks_within(model, self.flow.block_layers(model), budget)
        if method == PEERS[0]:
            comparison.whitened_low_rank(model, onnx.load(str(self.dense_path)), ranks, self.calibration_batches(),
                                         self.anneal_options()["input_shapes"])
        else:
            factorize(model, ranks)
        return f"ranks {sorted(set(ranks.values()))}"

    @abc.abstractmethod
    def targets(self, entries: dict[str, Entry], times: dict, int8: str) -> list[str]:
        """The issue's targets, each met or not with its figures (``times``: ``comparison.round_times``;
        ``int8``: the stronger int8 scheme)."""


def _tag(tolerance: float) -> str:
    return f"t{tolerance:g}"


def _file(name: str) -> str:
    return f"models/{name.replace(' ', '_')}.onnx"


class Stages:
    """The stages (module rules) of one ``Benchmark`` under ``work``."""

    def __init__(self, bench: Benchmark, args: argparse.Namespace):
        self.bench, self.args, self.work = bench, args, args.work
        self.manifest = Manifest(args.work)

    def _done(self, name: str) -> bool:
        return name in self.manifest.written()

    def _record(self, name: str, method: str, budget: str, model: onnx.ModelProto, steps: int = 0,
                quantized: str = "") -> None:
        """Write ``model`` and its entry (scores, MACs of one sequence)."""
        path = _file(name)
        (self.work / path).parent.mkdir(parents=True, exist_ok=True)
        onnx_decomp.save_model(model, self.work / path)
        start = time.perf_counter()
        scores = self.bench.score(model)
        entry = Entry(name, method, budget, path, steps, quantized, comparison.matmul_macs(model, self.bench.sequence()),
                      scores)
        self.manifest.add(entry)
        print(f"{name}: {', '.join(f'{k} {v:.4f}' for k, v in scores.items())}, {entry.macs / 1e6:.0f}M MACs "
              f"(scored in {time.perf_counter() - start:.0f} s)", flush=True)

    def _record_both(self, name: str, method: str, budget: str, model: onnx.ModelProto, steps: int = 0) -> None:
        """``model`` and its int8 form (the stronger scheme)."""
        scheme = self.int8()
        for suffix, proto in (("", model), (" +int8", None)):
            if not self._done(name + suffix):
                proto = proto or quantize(model, scheme)
                self._record(name + suffix, method, budget, proto, steps, scheme if suffix else "")

    def int8(self) -> str:
        """The stronger int8 scheme on the dense model (the dense stage's entries)."""
        entries = self.manifest.entries()
        return max(("int8", "int8-channel"), key=lambda s: entries[f"{DENSE} {s}"].scores[self.bench.quality])

    def dense(self) -> None:
        model = onnx.load(str(self.bench.dense_path))
        if not self._done(DENSE):
            self._record(DENSE, DENSE, "", model)
        for scheme in ("int8", "int8-channel", "int4"):
            if not self._done(f"{DENSE} {scheme}"):
                self._record(f"{DENSE} {scheme}", DENSE, "", quantize(model, scheme), quantized=scheme)
        print(f"stronger int8: {self.int8()}")

    def _folders(self) -> list[tuple[float, Optional[str], Path]]:
        """(tolerance, quantization scheme, folder) of every anneal run."""
        scheme = self.int8()
        return [(t, q, self.work / (_tag(t) + ("-int8" if q else ""))) for t in self.args.tolerances
                for q in (None, scheme)]

    def anneal(self) -> None:
        calib = self.bench.calibration()
        for tolerance, scheme, folder in self._folders():
            name = f"{OURS} {_tag(tolerance)}" + (" +int8" if scheme else "")
            if (folder / "plans.pkl").exists() and self._done(name):
                continue
            start = time.perf_counter()
            config = AnnealConfig(metric=self.bench.metric, tolerance=tolerance, families=FAMILIES, quantize=scheme)
            rewritten, report = onnx_decomp.anneal(
                str(self.bench.dense_path), calib, config=config,
                gate=GateConfig("cost", batches=self.bench.batches), report_dir=folder / "anneal",
                **self.bench.anneal_options())
            seconds = time.perf_counter() - start
            onnx_decomp.save_model(report.masked, folder / "masked.onnx")
            (folder / "plans.pkl").write_bytes(pickle.dumps(report.plans))
            kinds = sorted({type(p).__name__ for p in report.plans.values()})
            summary = {"tolerance": tolerance, "quantize": scheme, "seconds": seconds, "plans": len(report.plans),
                       "kinds": kinds, "mac_reduction": report.final.mac_reduction,
                       "validation": report.final.validation, "quantization": report.quantization,
                       "accepted": [f"{s.candidate.unit} {s.candidate.structure}" for s in report.accepted]}
            (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            print(f"{name}: {report.final.mac_reduction:.2f}x fewer weight MACs, held-out {self.bench.metric} "
                  f"{report.final.validation:.4f}, {len(report.plans)} plans ({', '.join(kinds)}), {seconds:.0f} s",
                  flush=True)
            self._record(name, OURS, _tag(tolerance), rewritten, quantized=scheme or "")

    def finetune(self) -> None:
        steps = self.args.steps
        for tolerance, scheme, folder in self._folders():
            name = f"{OURS} {_tag(tolerance)} +{steps} steps" + (" +int8" if scheme else "")
            if self._done(name):
                continue
            model = self.bench.flow.model()
            plans = pickle.loads((folder / "plans.pkl").read_bytes())
            structure = apply_structure(model, plans, onnx.load(str(folder / "masked.onnx")),
                                        onnx_model=onnx.load(str(self.bench.dense_path)))
            losses = self.bench.flow.finetune(model, steps, structure)
            self.bench.flow.export_model(model, folder / "finetuned.onnx")
            print(f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
            proto = onnx.load(str(folder / "finetuned.onnx"))
            self._record(name, OURS, _tag(tolerance), quantize(proto, scheme) if scheme else proto, steps,
                         scheme or "")

    def control(self) -> None:
        name = f"{DENSE} +{self.args.steps} steps"
        if not self._done(name):
            model = self.bench.flow.model()
            losses = self.bench.flow.finetune(model, self.args.steps)
            print(f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
            self._record(name, DENSE, "", self._exported(model), self.args.steps)

    def _exported(self, model: nn.Module) -> onnx.ModelProto:
        path = self.work / "models" / "export.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.bench.flow.export_model(model, path)
        return onnx.load(str(path))

    def budget(self, tolerance: float) -> int:
        """Ours' weight MACs per token after the float anneal at ``tolerance``."""
        plans = pickle.loads((self.work / _tag(tolerance) / "plans.pkl").read_bytes())
        return comparison.budget_after(plans, comparison.weight_macs(self.bench.flow.model()))

    def peers(self) -> None:
        steps = self.args.steps
        for tolerance in self.args.tolerances:
            budget, tag = self.budget(tolerance), _tag(tolerance)
            for method in PEERS:
                name = f"{method} {tag}"
                wanted = ("", " +int8") if self.args.post_training else \
                    ("", " +int8", f" +{steps} steps", f" +{steps} steps +int8")
                if all(self._done(name + s) for s in wanted):
                    continue
                model = self.bench.flow.model()
                kept = self.bench.peer(method, model, budget)
                print(f"{name}: budget {budget:,} weight MACs per token, kept {comparison.weight_macs(model):,} "
                      f"({kept})", flush=True)
                self._record_both(name, method, tag, self._exported(model))
                if self.args.post_training:
                    continue
                losses = self.bench.flow.finetune(model, steps)
                print(f"{name} +{steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
                self._record_both(f"{name} +{steps} steps", method, tag, self._exported(model), steps)

    def bench_stage(self) -> None:
        report = comparison.bench(self.work, DENSE, self.bench.batches, self.bench.bench_inputs(), self.args.budget)
        print(f"{len(report['results']) // len(self.bench.batches)} models, {report['rounds']} rounds at most, "
              f"ONNX Runtime {report['onnxruntime']}, one thread, CPU clock; written {self.work / 'bench.json'}")

    def report(self) -> None:
        entries = self.manifest.entries()
        times = comparison.round_times(json.loads((self.work / "bench.json").read_text()))
        timed = {name: e for name, e in entries.items() if all((name, b) in times for b in self.bench.batches)}
        speeds = {(name, b): comparison.ratio(times, b, DENSE, name) for name in timed for b in self.bench.batches}
        dense = entries[DENSE]
        rows = [("model", *self.bench.columns, "MatMul MACs / sequence",
                 *(f"speed b={b}" for b in self.bench.batches), "ms b=1")]
        for name, e in entries.items():
            speed = [f"{speeds[name, b]:.2f}x" if name in timed else "not timed" for b in self.bench.batches]
            ms = f"{np.median(times[name, 1]):.1f}" if name in timed else ""
            rows.append((name, *self.bench.cells(e.scores, dense.scores),
                         f"{e.macs / 1e6:.0f}M ({dense.macs / e.macs:.2f}x fewer)", *speed, ms))
        table = comparison.markdown(rows)
        (self.work / "table.md").write_text(table + "\n")
        print(table)
        figure = self.args.figure or self.work / "tradeoff.png"
        comparison.tradeoff_figure(list(timed.values()), speeds, self.bench.batches, self.bench.quality,
                                   self.bench.quality_label, figure, self.bench.title)
        print(f"figure: {figure}")
        for line in self.bench.targets(timed, times, self.int8()) + self.losses(timed, speeds):
            print(line)

    def losses(self, entries: dict[str, Entry], speeds: dict) -> list[str]:
        """Every peer point (int8 and int4 alone among them, post-training) that no point of ours with the same
        training covers (``comparison.uncovered``)."""
        lines = []
        for batch in self.bench.batches:
            for trained in (False, True):
                def points(keep):
                    return [Point(n, speeds[n, batch], e.scores[self.bench.quality]) for n, e in entries.items()
                            if bool(e.steps) == trained and keep(e)]
                ours = points(lambda e: e.method == OURS)
                peers = points(lambda e: e.method in PEERS or (e.method == DENSE and e.quantized))
                for peer, best in comparison.uncovered(peers, ours):
                    versus = f"ours' best as fast: {best.name} ({best.quality:.4f}, {best.speed:.2f}x)" if best \
                        else "no model of ours is as fast"
                    lines.append(f"ours loses, batch {batch}{' fine-tuned' if trained else ''}: {peer.name} "
                                 f"({peer.quality:.4f}, {peer.speed:.2f}x); {versus}")
        return lines


def main(bench: Benchmark, doc: str, extra: Mapping[str, Callable[[argparse.Namespace], None]] = {}) -> None:
    """Parse the pipeline's command line and run the stage asked for (``all``: every stage of the module rule
    in order; ``extra`` stages of the pipeline's own run alone)."""
    stages = ("dense", "anneal", "finetune", "control", "peers", "bench", "report")
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("stage", choices=[*stages, *extra, "all"])
    parser.add_argument("--work", type=Path, default=bench.work)
    parser.add_argument("--tolerances", type=lambda s: [float(v) for v in s.split(",")],
                        default=list(bench.tolerances))
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning budget, every method")
    parser.add_argument("--post-training", action="store_true", help="peers: post-training only, not fine-tuned")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of interleaved timing per batch size")
    parser.add_argument("--figure", type=Path, help="where the PNG goes (default: WORK/tradeoff.png)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run = Stages(bench, args)
    for name in stages + tuple(extra):
        if args.stage == name or (args.stage == "all" and name in stages):
            start = time.perf_counter()
            extra[name](args) if name in extra else getattr(run, "bench_stage" if name == "bench" else name)()
            print(f"[{name}: {time.perf_counter() - start:.0f} s]", flush=True)
