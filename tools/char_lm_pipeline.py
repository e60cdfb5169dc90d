"""The bundled char LM end to end, against the compression a user would pick instead; one command per stage.

    python tools/char_lm_pipeline.py analyze      # pi0 and confirmed density per weight; drop the unconfirmed
    python tools/char_lm_pipeline.py anneal       # anneal with refit at --tolerances (and one without refit)
    python tools/char_lm_pipeline.py finetune     # ours: fine-tune under each annealed structure
    python tools/char_lm_pipeline.py control      # the dense model fine-tuned the same budget
    python tools/char_lm_pipeline.py decompose    # ours: exact rewrite, time gate at batch 1 and 64
    python tools/char_lm_pipeline.py peers        # pruning and low-rank at ours' weight MACs, same fine-tuning
    python tools/char_lm_pipeline.py bench        # every model against dense, interleaved, batch 1 and 64
    python tools/char_lm_pipeline.py report       # accuracy, bits/char, MACs, speed, size: table and PNG
    python tools/char_lm_pipeline.py claims       # the paper's claims on this model, from what the stages wrote
    python tools/char_lm_pipeline.py all

Everything goes to ``--work`` (default ``build/char_lm``); each stage reads what the earlier ones wrote.
Models: ``models/char_lm/model.onnx`` (run ``python models/char_lm.py`` first). The fine-tuning budget
(``--steps``, the same for every method) and the peers' MatMul budgets are ``models/char_lm_flow.py``'s rules.
Annealing: top-1 disagreement with the dense model on 256 training windows (half tune, half held out),
cost gate for the rewrite inside it. Speed: ``onnx_decomp.drivers.bench.bench_models``, one intra-op thread,
that thread's CPU time (``--clock cpu``), medians of interleaved rounds, batch 1 and 64 (sequence 128).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

import onnx_decomp
from onnx_decomp import GateConfig, SessionConfig, ValidationConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.model_stats import model_stats
from onnx_decomp.drivers.bench import bench_models
from onnx_decomp.io.shapes import concrete_shapes, input_specs
from onnx_decomp.report.figures import plot_tradeoff
from onnx_decomp.report.table import table
from onnx_decomp.runtime.quantize import quantize_int8
from onnx_decomp_models import char_lm_flow as flow
from onnx_decomp_models.char_lm import CONTEXT, OUT, CharLM

MODEL = OUT / "model.onnx"
SHAPES = {"tokens": [64, CONTEXT]}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _read_json(path: Path):
    return json.loads(path.read_text())


def _tag(tolerance: float, refit: bool = True) -> str:
    return f"t{tolerance:g}" + ("" if refit else "-norefit")


def analyze(args) -> None:
    """pi0 and confirmed density per weight; accuracy with every unconfirmed entry set to zero."""
    result = onnx_decomp.analyze(str(MODEL), keep_masks=True)
    proto = onnx.load(str(MODEL))
    dense = flow.scores_of(proto)
    layouts = {op.weight.name: op.layout for op in ModelContext.load(str(MODEL)).ops}
    for tensor in proto.graph.initializer:
        if tensor.name in result.masks:
            array = onnx.numpy_helper.to_array(tensor)
            keep = layouts[tensor.name].from_matrix(result.masks[tensor.name])
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.where(keep, array, 0).astype(array.dtype), tensor.name))
    names = {name: group[0].parameter for name, group in flow.parameter_names().items()}
    rows = [{"weight": names.get(t.weight, t.weight), "shape": t.shape, "pi0": t.pi0,
             "confirmed_density": t.confirmed_density, "components": t.components} for t in result.tensors]
    pruned = flow.scores_of(proto)
    _write_json(args.work / "analysis.json", {"tensors": rows, "dense": dense, "confirmed_only": pruned})
    print(table([("weight", "shape", "pi0", "confirmed", "components")] +
                [(r["weight"], "x".join(map(str, r["shape"])), f"{r['pi0']:.3f}", f"{r['confirmed_density']:.3f}",
                  r["components"]) for r in rows]))
    share = sum(r["pi0"] * np.prod(r["shape"]) for r in rows) / sum(np.prod(r["shape"]) for r in rows)
    print(f"parameter-weighted pi0 {share:.3f}; accuracy dense {dense[0]:.4f} ({dense[1]:.4f} bits/char), "
          f"unconfirmed entries zeroed {pruned[0]:.4f} ({pruned[1]:.4f} bits/char)")


def anneal(args) -> None:
    """For each tolerance (and without refit at the first): the annealed, refitted masked model and its plans."""
    calib = {"tokens": flow.calibration_windows()}
    runs = [(t, True) for t in args.tolerances] + [(args.tolerances[0], False)]
    for tolerance, refit in runs:
        folder = args.work / _tag(tolerance, refit)
        start = time.perf_counter()
        rewritten, report = onnx_decomp.anneal(str(MODEL), calib, metric="top1", tolerance=tolerance, refit=refit,
                                               gate="cost", input_shapes=SHAPES, report_dir=folder / "anneal")
        seconds = time.perf_counter() - start
        onnx_decomp.save_model(report.masked, folder / "masked.onnx")
        onnx_decomp.save_model(rewritten, folder / "annealed.onnx")
        (folder / "plans.pkl").write_bytes(pickle.dumps(report.plans))
        accepted = [f"{s.candidate.unit} {s.candidate.structure}" for s in report.accepted]
        _write_json(folder / "summary.json", {
            "tolerance": tolerance, "refit": refit, "seconds": seconds, "accepted": accepted,
            "mac_reduction": report.final.mac_reduction, "validation_top1": report.final.validation,
            "scores_annealed": flow.scores_of(rewritten)})
        print(f"{_tag(tolerance, refit)}: {report.final.mac_reduction:.2f}x fewer MACs, held-out top-1 "
              f"disagreement {report.final.validation:.4f}, {seconds:.0f} s; accepted: {'; '.join(accepted)}")


def _plans(folder: Path) -> dict:
    """The plans annealing chose (``Site`` -> plan), as the anneal stage wrote them."""
    return pickle.loads((folder / "plans.pkl").read_bytes())


def finetune(args) -> None:
    """Ours: every annealed model fine-tuned ``--steps`` under its structure (``flow.structured_model``)."""
    for tolerance in args.tolerances:
        folder = args.work / _tag(tolerance)
        model, structure = flow.structured_model(folder / "masked.onnx", _plans(folder))
        losses = flow.finetune(model, args.steps, structure)
        flow.export_model(model, folder / "finetuned.onnx")
        print(f"{_tag(tolerance)}: fine-tuned {args.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def control(args) -> None:
    """The dense model fine-tuned ``--steps`` as every method is: what the budget alone gives."""
    model = flow.model_from_onnx(MODEL)
    losses = flow.finetune(model, args.steps)
    flow.export_model(model, args.work / "dense_finetuned.onnx")
    print(f"dense control: fine-tuned {args.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def decompose(args) -> None:
    """Ours: the fine-tuned model rewritten exactly, forms and gate judged at batch 1 and 64."""
    calib = {"tokens": flow.calibration_windows(16)}
    for tolerance in args.tolerances:
        folder = args.work / _tag(tolerance)
        rewritten, report = onnx_decomp.decompose(str(folder / "finetuned.onnx"), gate=GateConfig(batches=(1, 64)),
                                                  validation=ValidationConfig(inputs=calib))
        onnx_decomp.save_model(rewritten, folder / "decomposed.onnx")
        forms = [f"{n.weight}:{n.form}" for n in report.nodes if n.action == "rewrite"]
        print(f"{_tag(tolerance)}: rewrote {len(forms)} of {len(report.nodes)} nodes ({', '.join(forms)})")


def _budget(folder: Path) -> float:
    """Ours' weight MACs per token: the dense model's, less what every plan saves."""
    dense = flow.weight_macs(CharLM())
    return dense - sum(plan.dense_macs - plan.macs for plan in _plans(folder).values())


def peers(args) -> None:
    """Structured pruning and low-rank at each of ours' weight MAC budgets, fine-tuned the same budget."""
    for tolerance in args.tolerances:
        budget = _budget(args.work / _tag(tolerance))
        for name, make in (("pruned", flow.prune_to), ("lowrank", flow.low_rank_to)):
            model = flow.model_from_onnx(MODEL)
            shape = make(model, budget)
            losses = flow.finetune(model, args.steps)
            flow.export_model(model, args.work / f"{name}_{_tag(tolerance)}.onnx")
            print(f"{name} at {budget:,.0f} MACs/token ({_tag(tolerance)}): kept {flow.weight_macs(model):,} "
                  f"({shape if name == 'pruned' else 'ranks ' + str(sorted(set(shape.values())))}); loss "
                  f"{losses[0]:.3f} -> {losses[-1]:.3f}")


def _models(args) -> dict[str, tuple[str, str, Path, bool]]:
    """Table name -> (method, budget, float model path, quantize it)."""
    models = {"dense": ("dense", "", MODEL, False), "dense+int8": ("int8", "", MODEL, True),
              "dense fine-tuned": ("dense fine-tuned", "", args.work / "dense_finetuned.onnx", False)}
    for tolerance in args.tolerances:
        tag, folder = _tag(tolerance), args.work / _tag(tolerance)
        models[f"ours {tag}"] = ("ours", tag, folder / "decomposed.onnx", False)
        models[f"ours {tag}+int8"] = ("ours+int8", tag, folder / "decomposed.onnx", True)
        models[f"pruned {tag}"] = ("pruned", tag, args.work / f"pruned_{tag}.onnx", False)
        models[f"lowrank {tag}"] = ("low-rank", tag, args.work / f"lowrank_{tag}.onnx", False)
    return models


def _load(path: Path, quantize: bool) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    return quantize_int8(proto) if quantize else proto


def bench(args) -> None:
    """Every model against dense, interleaved (module docstring); bench.json."""
    models = _models(args)
    protos = {name: _load(path, q) for name, (_, _, path, q) in models.items()}
    sources = {name: name.removesuffix("+int8") for name, (_, _, _, q) in models.items() if q}
    report = bench_models(protos, [1, 64], SessionConfig("cpu", threads=1), budget_s=args.budget, clock="cpu",
                          flop_sources=sources)
    report.write_json(args.work / "bench.json")
    print(report.format())


def report(args) -> None:
    """Accuracy, bits/char, MatMul MACs per sequence, speed at batch 1 and 64, file size: table and PNG."""
    speeds = {}
    for result in _read_json(args.work / "bench.json")["results"]:
        speeds[(result["model"], result["batch"])] = result["speedup"]
    rows = []
    for name, (method, budget, path, quantize) in _models(args).items():
        source = onnx.load(str(path))
        proto = quantize_int8(source) if quantize else source
        accuracy, bits = flow.scores_of(proto)
        specs = [replace(s, shape=(1, *s.shape[1:])) for s in input_specs(source)]
        macs = model_stats(source, concrete_shapes(source, specs, data_prop=True)).matmul_flops // 2
        size = len(proto.SerializeToString())
        rows.append(dict(model=name, method=method, budget=budget, accuracy=accuracy, bits=bits, macs=macs,
                         speed_1=speeds.get((name, 1)), speed_64=speeds.get((name, 64)), bytes=size))
    _write_json(args.work / "results.json", rows)
    dense = rows[0]
    print(table([("model", "next-char accuracy", "bits/char", "MatMul MACs / seq", "speed b=1", "speed b=64",
                  "file MB")] + [(r["model"], f"{r['accuracy']:.4f} ({100 * (r['accuracy'] - dense['accuracy']):+.2f})",
                                  f"{r['bits']:.4f}", f"{r['macs'] / 1e6:.0f}M ({dense['macs'] / r['macs']:.2f}x fewer)",
                                  f"{r['speed_1']:.2f}x", f"{r['speed_64']:.2f}x", f"{r['bytes'] / 2 ** 20:.1f}")
                                 for r in rows]))
    panels = {}
    for batch in (1, 64):
        series: dict = {}
        for r in rows[1:]:
            series.setdefault(r["method"], []).append((r[f"speed_{batch}"], r["accuracy"], r["budget"]))
        panels[f"batch {batch}, sequence {CONTEXT}"] = series
    plot_tradeoff(panels, dense["accuracy"], args.figure or args.work / "tradeoff.png", "next-character accuracy",
                  "char LM")
    print(f"figure: {args.figure or args.work / 'tradeoff.png'}")


def claims(args) -> None:
    """The paper's claims on this model, from what the stages wrote: the fraction indistinguishable from
    initialization, the unconfirmed entries removed, and the structure annealing found (with and without
    refit) with its accuracy before and after fine-tuning."""
    analysis = _read_json(args.work / "analysis.json")
    finetuned = {r["budget"]: r for r in _read_json(args.work / "results.json") if r["method"] == "ours"}
    modules = {name: group[0].parameter.removesuffix(".weight") for name, group in flow.parameter_names().items()}
    pi0 = [t["pi0"] for t in analysis["tensors"]]
    dense, removed = analysis["dense"], analysis["confirmed_only"]
    print(f"pi0 per weight {min(pi0):.3f}-{max(pi0):.3f}; accuracy {dense[0]:.4f} ({dense[1]:.3f} bits/char), "
          f"unconfirmed entries zeroed {removed[0]:.4f} ({removed[1]:.3f} bits/char); confirmed support "
          f"components per weight: {sorted({t['components'] for t in analysis['tensors']})}")
    rows = [("run", "MACs fewer", "top-1 disagreement", "accuracy annealed", "fine-tuned", "accepted")]
    for path in sorted(args.work.glob("t*/summary.json"), key=lambda p: (_read_json(p)["tolerance"], p.name)):
        run = _read_json(path)
        tuned = finetuned.get(path.parent.name)
        accepted = "; ".join(" ".join(modules.get(n, n) for n in unit.replace("+", " + ").split(" "))
                             for unit in run["accepted"])
        rows.append((path.parent.name, f"{run['mac_reduction']:.2f}x", f"{run['validation_top1']:.4f}",
                     f"{run['scores_annealed'][0]:.4f}", f"{tuned['accuracy']:.4f}" if tuned else "",
                     accepted or "(none)"))
    print(table(rows))


STAGES = {"analyze": analyze, "anneal": anneal, "finetune": finetune, "control": control, "decompose": decompose,
          "peers": peers, "bench": bench, "report": report, "claims": claims}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=[*STAGES, "all"])
    parser.add_argument("--work", type=Path, default=Path("build/char_lm"))
    parser.add_argument("--tolerances", type=lambda s: [float(v) for v in s.split(",")],
                        default=[0.05, 0.15, 0.3, 0.5])
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning budget, every method")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of interleaved timing per batch size")
    parser.add_argument("--figure", type=Path, help="where the PNG goes (default: WORK/tradeoff.png)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name, stage in STAGES.items():
        if args.stage in (name, "all"):
            start = time.perf_counter()
            stage(args)
            print(f"[{name}: {time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
