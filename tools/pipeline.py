"""The whole flow on the digits MLP, printing fidelity and speed at each stage.

    python tools/pipeline.py [--width 1024] [--tolerance 0.01] [--epochs 5] [--batch 64]

train dense (recording the init) -> export -> analyze -> anneal (top-1 disagreement <= --tolerance on
calibration samples drawn from the training set; refit on) -> fine-tune under the annealed block mask,
starting from the annealed (refitted) weights -> export -> decompose (exact) -> time each model against the
dense one in ONNX Runtime (interleaved runs, median ratio). Accuracy is measured on the held-out test split,
which neither the annealing nor the fine-tuning sees. Seeded, CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

import onnx_decomp
from onnx_decomp.cost.timing import median_speedup
from onnx_decomp.torch import apply_block_mask, export, finetune_under_mask, record_init
from onnx_decomp_models.common import Batches, deterministic
from onnx_decomp_models.digits import digits_mlp, digits_split

CALIBRATION = 512  # training samples the annealing measures fidelity on (half tuning, half held out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    deterministic(0)
    x_train, x_test, y_train, y_test = digits_split(0)
    model = digits_mlp(args.width)
    init = record_init(model)
    loss, batches = torch.nn.functional.cross_entropy, Batches(x_train, y_train, 64)
    finetune_under_mask(model, loss, batches, epochs=20)  # no mask: dense training
    folder = Path(tempfile.mkdtemp(prefix="onnx-decomp-pipeline-"))
    feed = {"input": np.resize(x_test, (args.batch, 64))}

    def session(path: Path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    dense_path = folder / "dense.onnx"
    export(model, (torch.from_numpy(x_test[:2]),), dense_path, init, input_names=["input"], output_names=["logits"])
    dense = session(dense_path)
    dense_top1 = dense.run(None, {"input": x_test})[0].argmax(1)

    def stage(label: str, path: Path, macs: int) -> None:
        top1 = session(path).run(None, {"input": x_test})[0].argmax(1)
        speed = median_speedup(session(dense_path), session(path), feed, budget_s=3.0)  # fresh sessions both
        print(f"| {label} | {np.mean(top1 == y_test):.4f} | {np.mean(top1 == dense_top1):.4f} | {macs:,} | "
              f"{speed:.2f}x |")

    analysis = onnx_decomp.analyze(dense_path)
    print("analysis: " + ", ".join(f"{t.weight} pi0 {t.pi0:.2f}, {t.components} component(s)"
                                   for t in analysis.tensors))
    calib = np.random.default_rng(0).choice(len(x_train), CALIBRATION, replace=False)
    annealed, report = onnx_decomp.anneal(dense_path, {"input": x_train[calib]}, metric="top1",
                                          tolerance=args.tolerance, input_shapes={"input": [args.batch, 64]})
    annealed_path = folder / "annealed.onnx"
    onnx_decomp.save_model(annealed, annealed_path)
    print("annealed: " + ", ".join(f"{s.candidate.unit} {s.candidate.structure}" for s in report.accepted))
    print(f"\n| stage (speed at batch {args.batch}) | test accuracy | top-1 agreement with dense | MatMul MACs "
          "per sample (executed) | speed vs dense |\n|---|---|---|---|---|")
    dense_macs = report.final.dense_macs // args.batch
    stage("1. trained dense", dense_path, dense_macs)
    executed = report.decomposition.after.matmul_flops // 2 // args.batch
    stage(f"2. annealed (top1 <= {args.tolerance:g}), refitted, decomposed", annealed_path, executed)

    refitted = {t.name: numpy_helper.to_array(t) for t in report.masked.graph.initializer}
    with torch.no_grad():  # the exporter kept the parameter names as initializer names
        for name, parameter in model.named_parameters():
            if name in refitted and refitted[name].shape == tuple(parameter.shape):
                parameter.copy_(torch.from_numpy(refitted[name].copy()))
    mask = apply_block_mask(model, report.plans, onnx_model=dense_path)
    finetune_under_mask(model, loss, batches, epochs=args.epochs, mask=mask)
    tuned_path = folder / "finetuned.onnx"
    export(model, (torch.from_numpy(x_test[:2]),), tuned_path, init, input_names=["input"], output_names=["logits"])
    stage(f"3. fine-tuned {args.epochs} epochs under the annealed mask (dense form)", tuned_path, dense_macs)
    rewritten, decomposition = onnx_decomp.decompose(tuned_path, input_shapes={"input": [args.batch, 64]})
    decomposed_path = folder / "decomposed.onnx"
    onnx_decomp.save_model(rewritten, decomposed_path)
    after = decomposition.after.matmul_flops // 2 // args.batch
    stage("4. fine-tuned, decomposed exactly", decomposed_path, after)
    print("\nexact rewrite: " + ", ".join(f"{n.weight} {n.blocks} blocks {n.action}" for n in decomposition.nodes)
          + f"; files in {folder}")
    onnx.checker.check_model(str(decomposed_path))


if __name__ == "__main__":
    main()
