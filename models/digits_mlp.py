"""Train the digits MLP, then cut its middle chain into 4 independent sub-networks and fine-tune.

    python models/digits_mlp.py      # writes models/digits_mlp/ (see models/common.py), plus blocked.onnx

64 -> 256 -> 256 -> 10, ReLU, on scikit-learn's bundled digits (pixels / 16; 75/25 stratified split, seed
0), Adam lr 1e-3, batch 64, 30 epochs, PyTorch default init (recorded as ``torch-linear``).

The chain middle layer (256x256) -> ReLU -> output layer (10x256) is cut into k=4 balanced blocks by
co-clustering the composite ``W_out @ W_mid`` (``onnx_decomp.planning.coclustering.coclustered_plan``); the
block mask is applied, the model fine-tuned 20 epochs under it (``finetune_under_mask``) and exported as
``blocked.onnx``, whose middle and output weights are exactly zero outside the 4 blocks. Seeded, two CPU
threads, a few seconds.
"""

from __future__ import annotations

import copy

import torch

from onnx_decomp.planning.coclustering import coclustered_plan
from onnx_decomp.torch import apply_block_mask, finetune_under_mask, record_init
from onnx_decomp_models.common import (HERE, Batches, components, deterministic, predict, run_onnx, save_data,
                                       save_model)
from onnx_decomp_models.digits import digits_mlp, digits_split

OUT = HERE / "digits_mlp"
SEED, WIDTH, BLOCKS, EPOCHS, FINETUNE_EPOCHS = 0, 256, 4, 30, 20
MIDDLE, LAST = "2.weight", "4.weight"


def main() -> None:
    deterministic(SEED)
    x_train, x_test, y_train, y_test = digits_split(SEED)
    model = digits_mlp(WIDTH)
    init = record_init(model)
    batches = Batches(x_train, y_train, 64)
    loss = torch.nn.functional.cross_entropy
    finetune_under_mask(model, loss, batches, epochs=EPOCHS)  # no mask: dense training

    def accuracy(net) -> float:
        return float((predict(net, x_test).argmax(1) == y_test).mean())

    dense_accuracy = accuracy(model)
    save_data(OUT, "input", x_test, "logits", y_test)
    dense_path = save_model(OUT, "model.onnx", model, init, x_test[:2], "input", "logits")

    blocked = copy.deepcopy(model)
    plan_middle, plan_last = coclustered_plan(model[2].weight.detach().numpy(), model[4].weight.detach().numpy(),
                                              BLOCKS, seed=SEED)
    mask = apply_block_mask(blocked, {MIDDLE: plan_middle, LAST: plan_last})
    cut_accuracy = accuracy(blocked)
    finetune_under_mask(blocked, loss, batches, epochs=FINETUNE_EPOCHS, mask=mask)
    tuned_accuracy = accuracy(blocked)
    blocked_path = save_model(OUT, "blocked.onnx", blocked, init, x_test[:2], "input", "logits")

    onnx_accuracy = [float((run_onnx(p, {"input": x_test}).argmax(1) == y_test).mean())
                     for p in (dense_path, blocked_path)]
    print(f"digits MLP 64-{WIDTH}-{WIDTH}-10, test accuracy ({len(y_test)} samples):")
    print(f"  dense {dense_accuracy:.4f} | cut into {BLOCKS} blocks {cut_accuracy:.4f} | "
          f"fine-tuned {FINETUNE_EPOCHS} epochs {tuned_accuracy:.4f}")
    print(f"  ONNX Runtime: model.onnx {onnx_accuracy[0]:.4f}, blocked.onnx {onnx_accuracy[1]:.4f}")
    print(f"  blocked.onnx components: {MIDDLE} {components(blocked_path, MIDDLE)}, "
          f"{LAST} {components(blocked_path, LAST)}; wrote {OUT}")


if __name__ == "__main__":
    main()
