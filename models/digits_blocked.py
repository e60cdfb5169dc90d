"""Train the bundled quickstart model: a digits MLP whose middle layer is 8 blocks, hidden by permutations.

    python models/digits_blocked.py      # writes models/digits_blocked/ (see models/common.py)

64 -> 1024 -> 1024 -> 10, ReLU, on scikit-learn's digits (the split of ``digits.digits_split``). The middle
1024x1024 weight is held from initialization to an 8-block plan whose rows and columns are randomly
permuted (``onnx_decomp.torch.apply_block_mask``, trained with ``finetune_under_mask``: Adam, 20 epochs),
so `onnx-decomp decompose` has exactly 8 hidden blocks to find. Seeded, two CPU threads, under a minute.
"""

from __future__ import annotations

import numpy as np
import torch

from onnx_decomp.torch import apply_block_mask, export, finetune_under_mask
from onnx_decomp_models.common import HERE, Batches, deterministic, predict, save_data
from onnx_decomp_models.digits import digits_mlp, digits_split
from onnx_decomp_passes import BlockPlan, Branch

OUT = HERE / "digits_blocked"
SEED, WIDTH, BLOCKS, EPOCHS = 0, 1024, 8, 20


def hidden_block_plan(width: int, blocks: int, rng: np.random.Generator) -> BlockPlan:
    """``blocks`` equal diagonal blocks of a ``width x width`` weight, rows and columns shuffled."""
    rows, cols = rng.permutation(width).reshape(blocks, -1), rng.permutation(width).reshape(blocks, -1)
    return BlockPlan(width, width, tuple(Branch(r, c) for r, c in zip(rows, cols)))


def main() -> None:
    deterministic(SEED)
    x_train, x_test, y_train, y_test = digits_split(SEED)
    model = digits_mlp(WIDTH)
    mask = apply_block_mask(model, {"2.weight": hidden_block_plan(WIDTH, BLOCKS, np.random.default_rng(SEED))})
    finetune_under_mask(model, torch.nn.functional.cross_entropy, Batches(x_train, y_train, 64), EPOCHS,
                        mask=mask)
    accuracy = float((predict(model, x_test).argmax(1) == y_test).mean())
    OUT.mkdir(exist_ok=True)
    export(model, (torch.from_numpy(x_test[:2]),), OUT / "model.onnx", input_names=["input"],
           output_names=["logits"])
    save_data(OUT, "input", x_test, "logits", y_test)
    density = float((model[2].weight != 0).float().mean())
    print(f"digits_blocked: test accuracy {accuracy:.4f}, middle layer density {density:.3f} ({BLOCKS} blocks); "
          f"wrote {OUT}")


if __name__ == "__main__":
    main()
