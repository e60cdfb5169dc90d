"""The bundled char LM end to end, against the compression a user would pick instead; one command per stage.

    python tools/char_lm_pipeline.py dense        # dense, int8 per tensor / per channel, int4
    python tools/char_lm_pipeline.py anneal       # ours at --tolerances (top-1 disagreement), float and + int8
    python tools/char_lm_pipeline.py finetune     # ours + --steps under each annealed structure
    python tools/char_lm_pipeline.py control      # the dense model + --steps
    python tools/char_lm_pipeline.py peers        # whitened low rank, plain SVD, pruning at ours' weight MACs
    python tools/char_lm_pipeline.py bench        # every model written so far, side by side, batch 1 and 64
    python tools/char_lm_pipeline.py report       # the table, models/char_lm/tradeoff.png, targets, losses
    python tools/char_lm_pipeline.py analyze      # pi0 and confirmed density per weight; drop the unconfirmed
    python tools/char_lm_pipeline.py claims       # the paper's claims on this model, from what the stages wrote
    python tools/char_lm_pipeline.py all          # dense ... report

Stages: ``tools/benchmark.py``; everything goes to ``--work`` (default ``build/char_lm``). Model:
``models/char_lm/model.onnx`` (``python models/char_lm.py``). Rules of the comparison (fine-tuning, peers at
a budget, annealing's calibration windows): ``models/char_lm_flow.py`` and ``models/comparison.py``.
Annealing: top-1 disagreement with the dense model on 256 training windows (half tune, half held out), cost
gate at batch 1 and 64. Scores: next-character accuracy and bits per character on 1024 held-out windows.
Speed: one intra-op thread, its CPU time, medians of per-round ratios, batch 1 and 64 of the evaluation
windows (sequence 128).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

import onnx_decomp
from onnx_decomp.context import ModelContext
from onnx_decomp.report.table import table
from onnx_decomp_models import char_lm_flow as flow
from onnx_decomp_models.char_lm import CONTEXT, OUT
from onnx_decomp_models.comparison import Entry, ratio

from benchmark import DENSE, OURS, Benchmark, main

MODEL = OUT / "model.onnx"
WORK = Path("build/char_lm")


class CharLMBenchmark(Benchmark):
    title = "char LM"
    work = WORK
    dense_path = MODEL
    batches = (1, 64)
    quality, quality_label = "accuracy", "next-character accuracy"
    columns = ("next-char accuracy (pp vs dense)", "bits/char")
    metric = "top1"
    tolerances = (0.03, 0.06, 0.12, 0.25)
    flow = flow

    def score(self, model):
        accuracy, bits = flow.scores_of(model)
        return {"accuracy": accuracy, "bits": bits}

    def cells(self, scores, dense):
        return [f"{scores['accuracy']:.4f} ({100 * (scores['accuracy'] - dense['accuracy']):+.2f})",
                f"{scores['bits']:.3f}"]

    def sequence(self):
        return {"tokens": flow.evaluation_windows()[0][:1]}

    def bench_inputs(self):
        return {"tokens": flow.evaluation_windows()[0]}

    def calibration(self):
        return {"tokens": flow.calibration_windows()}

    def anneal_options(self):
        return {"input_shapes": {"tokens": [64, CONTEXT]}}

    def targets(self, entries: dict[str, Entry], times: dict, int8: str) -> list[str]:
        """Post-training within 0.5 pp of dense: 2x at batch 64 and 1.5x at batch 1 (quantization allowed);
        fine-tuned at the same accuracy: 2.5x."""
        floor = entries[DENSE].scores["accuracy"] - 0.005
        lines = []
        for trained, wanted in ((False, {1: 1.5, 64: 2.0}), (True, {1: 2.5, 64: 2.5})):
            within = [n for n, e in entries.items() if e.method == OURS and bool(e.steps) == trained
                      and e.scores["accuracy"] >= floor]
            for batch, target in wanted.items():
                best = max(within, key=lambda n: ratio(times, batch, DENSE, n), default=None)
                speed = ratio(times, batch, DENSE, best) if best else 0.0
                lines.append(f"target {'fine-tuned' if trained else 'post-training'}, within 0.5 pp of dense, "
                             f"batch {batch}: {target}x wanted, {speed:.2f}x by {best or 'none'} "
                             f"({'met' if speed >= target else 'not met'})")
        return lines


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
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "analysis.json").write_text(json.dumps({"tensors": rows, "dense": dense, "confirmed_only": pruned},
                                                   indent=1) + "\n")
    print(table([("weight", "shape", "pi0", "confirmed", "components")] +
                [(r["weight"], "x".join(map(str, r["shape"])), f"{r['pi0']:.3f}", f"{r['confirmed_density']:.3f}",
                  r["components"]) for r in rows]))
    share = sum(r["pi0"] * np.prod(r["shape"]) for r in rows) / sum(np.prod(r["shape"]) for r in rows)
    print(f"parameter-weighted pi0 {share:.3f}; accuracy dense {dense[0]:.4f} ({dense[1]:.4f} bits/char), "
          f"unconfirmed entries zeroed {pruned[0]:.4f} ({pruned[1]:.4f} bits/char)")


def claims(args) -> None:
    """The paper's claims on this model, from what the stages wrote: the fraction indistinguishable from
    initialization, the unconfirmed entries removed, and the structure annealing found with its accuracy
    before and after fine-tuning."""
    work, steps = args.work, args.steps
    analysis = json.loads((work / "analysis.json").read_text())
    entries = {e["name"]: e for e in json.loads((work / "models.json").read_text())}
    pi0 = [t["pi0"] for t in analysis["tensors"]]
    dense, removed = analysis["dense"], analysis["confirmed_only"]
    print(f"pi0 per weight {min(pi0):.3f}-{max(pi0):.3f}; accuracy {dense[0]:.4f} ({dense[1]:.3f} bits/char), "
          f"unconfirmed entries zeroed {removed[0]:.4f} ({removed[1]:.3f} bits/char); confirmed support "
          f"components per weight: {sorted({t['components'] for t in analysis['tensors']})}")
    rows = [("run", "weight MACs fewer", "held-out top-1 disagreement", "accuracy", f"+{steps} steps", "plans")]
    for path in sorted(work.glob("t*/summary.json")):
        run = json.loads(path.read_text())
        name = f"{OURS} {path.parent.name.replace('-int8', '')}" + (" +int8" if run["quantize"] else "")
        tuned = entries.get(name.replace(" +int8", f" +{steps} steps +int8") if run["quantize"]
                            else f"{name} +{steps} steps")
        rows.append((path.parent.name, f"{run['mac_reduction']:.2f}x", f"{run['validation']:.4f}",
                     f"{entries[name]['scores']['accuracy']:.4f}",
                     f"{tuned['scores']['accuracy']:.4f}" if tuned else "", f"{run['plans']} ({', '.join(run['kinds'])})"))
    print(table(rows))


if __name__ == "__main__":
    main(CharLMBenchmark(), __doc__, {"analyze": analyze, "claims": claims})
