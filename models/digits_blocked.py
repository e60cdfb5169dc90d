"""Train the bundled quickstart model: an MLP on scikit-learn's digits whose middle layer is 8 blocks.

    python models/digits_blocked.py      # writes models/digits_blocked/{model.onnx, test.npz}

64 -> 1024 -> 1024 -> 10, ReLU. The middle 1024x1024 weight is trained under a block-diagonal mask hidden by
random row and column permutations (re-applied after every optimizer step), so it is exactly 8 blocks
that `onnx-decomp decompose` has to find. Seeded, CPU, under a minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).with_suffix("")
BLOCKS, WIDTH, EPOCHS, SEED = 8, 1024, 20, 0


def block_mask(width: int, blocks: int, generator: torch.Generator) -> torch.Tensor:
    size = width // blocks
    mask = torch.block_diag(*[torch.ones(size, size)] * blocks)
    rows, cols = torch.randperm(width, generator=generator), torch.randperm(width, generator=generator)
    return mask[rows][:, cols]


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25,
                                                        random_state=SEED, stratify=digits.target)
    model = torch.nn.Sequential(torch.nn.Linear(64, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH),
                                torch.nn.ReLU(), torch.nn.Linear(WIDTH, 10))
    mask = block_mask(WIDTH, BLOCKS, torch.Generator().manual_seed(SEED))
    middle = model[2].weight
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(xs)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
            with torch.no_grad():
                middle.mul_(mask)
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    OUT.mkdir(exist_ok=True)
    torch.onnx.export(model, (torch.from_numpy(x_test[:2]),), OUT / "model.onnx", dynamo=True,
                      external_data=False, input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    np.savez(OUT / "test.npz", input=x_test, label=y_test)
    print(f"test accuracy {accuracy:.4f}; middle layer density {mask.mean().item():.3f} "
          f"({BLOCKS} hidden blocks); wrote {OUT / 'model.onnx'}")


if __name__ == "__main__":
    main()
