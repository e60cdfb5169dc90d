"""The whole flow on the digits MLP, printing accuracy and speed at each stage.

    python tools/pipeline.py [--width 1024] [--blocks 8] [--batch 64]

train (recording the init) -> export -> analyze -> co-clustered block plan for the chain middle -> output
layer -> mask and fine-tune -> export -> decompose (exact) -> time dense vs decomposed in ONNX Runtime
(interleaved runs, median ratio). Seeded, CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import onnx_decomp
from onnx_decomp.cost.timing import median_speedup
from onnx_decomp.planning.coclustering import coclustered_plan
from onnx_decomp.torch import apply_block_mask, export, finetune_under_mask, record_init
from onnx_decomp_models.common import Batches, deterministic
from onnx_decomp_models.digits import digits_mlp, digits_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    deterministic(0)
    x_train, x_test, y_train, y_test = digits_split(0)
    model = digits_mlp(args.width)
    init = record_init(model)
    loss, batches = torch.nn.functional.cross_entropy, Batches(x_train, y_train, 64)
    finetune_under_mask(model, loss, batches, epochs=20)  # no mask: dense training
    folder = Path(tempfile.mkdtemp(prefix="onnx-decomp-pipeline-"))

    def accuracy(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float((session.run(None, {"input": x_test})[0].argmax(1) == y_test).mean())

    export(model, (torch.from_numpy(x_test[:2]),), folder / "dense.onnx", init, input_names=["input"])
    print(f"1. trained and exported:  accuracy {accuracy(folder / 'dense.onnx'):.4f}")
    analysis = onnx_decomp.analyze(folder / "dense.onnx")
    print("2. analysis: " + ", ".join(f"{t.weight} pi0 {t.pi0:.2f} components {t.components}"
                                      for t in analysis.tensors))
    plans = coclustered_plan(model[2].weight.detach().numpy(), model[4].weight.detach().numpy(), args.blocks)
    mask = apply_block_mask(model, {"2.weight": plans[0], "4.weight": plans[1]})
    export(model, (torch.from_numpy(x_test[:2]),), folder / "cut.onnx", input_names=["input"])
    print(f"3. cut into {args.blocks} co-clustered blocks: accuracy {accuracy(folder / 'cut.onnx'):.4f}")
    finetune_under_mask(model, loss, batches, epochs=10, mask=mask)
    export(model, (torch.from_numpy(x_test[:2]), ), folder / "blocked.onnx", init, input_names=["input"])
    print(f"4. fine-tuned under the mask: accuracy {accuracy(folder / 'blocked.onnx'):.4f}")
    shapes = {"input": [args.batch, 64]}
    rewritten, report = onnx_decomp.decompose(folder / "blocked.onnx", input_shapes=shapes)
    onnx_decomp.save_model(rewritten, folder / "decomposed.onnx")
    print(f"5. decomposed (exact): accuracy {accuracy(folder / 'decomposed.onnx'):.4f}; " + ", ".join(
        f"{n.weight}: {n.blocks} blocks, {n.action}" for n in report.nodes))
    feed = {"input": np.resize(x_test, (args.batch, 64))}
    sessions = [ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
                for name in ("dense.onnx", "decomposed.onnx")]
    ratio = median_speedup(*sessions, feed, budget_s=float("inf"), max_pairs=50)
    print(f"6. ONNX Runtime CPU, batch {args.batch}: decomposed runs {ratio:.2f}x the speed of dense; files in {folder}")


if __name__ == "__main__":
    main()
