"""Train the bundled digits models (scikit-learn's digits, seeded, CPU, under a minute together).

    python models/digits.py

- ``models/digits_blocked/``: 64 -> 1024 -> 1024 -> 10 MLP whose middle 1024x1024 weight is trained under
  an 8-block mask hidden by random row and column permutations (re-applied after every optimizer step),
  so it is exactly 8 blocks that `onnx-decomp decompose` has to find. The quickstart model.
- ``models/digits_mlp/``: the dense 64 -> 256 -> 256 -> 10 MLP of design.md section 7, with its
  initialization exported as ``init.onnx`` (same initializer names) for `analyze --init-reference`.

Each folder gets ``model.onnx`` and ``test.npz`` (``input``: the held-out images, ``label``: their digits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).parent
SEED = 0


def block_mask(width: int, blocks: int, generator: torch.Generator) -> torch.Tensor:
    size = width // blocks
    mask = torch.block_diag(*[torch.ones(size, size)] * blocks)
    rows, cols = torch.randperm(width, generator=generator), torch.randperm(width, generator=generator)
    return mask[rows][:, cols]


def mlp(width: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))


def train(model: torch.nn.Sequential, data, epochs: int, middle_mask: Optional[torch.Tensor] = None) -> float:
    """Adam, batches of 64; the middle weight is re-masked after every step. Returns test accuracy."""
    x_train, x_test, y_train, y_test = data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        for batch in torch.randperm(len(xs)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
            if middle_mask is not None:
                with torch.no_grad():
                    model[2].weight.mul_(middle_mask)
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())


def export(model: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    torch.onnx.export(model, (torch.from_numpy(example),), path, dynamo=True, external_data=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))


def main() -> None:
    torch.set_num_threads(2)
    digits = load_digits()
    data = train_test_split((digits.data / 16.0).astype(np.float32), digits.target, test_size=0.25,
                            random_state=SEED, stratify=digits.target)
    x_test, y_test = data[1], data[3]

    torch.manual_seed(SEED)
    blocked, mask = mlp(1024), block_mask(1024, 8, torch.Generator().manual_seed(SEED))
    accuracy = train(blocked, data, epochs=20, middle_mask=mask)
    out = HERE / "digits_blocked"
    out.mkdir(exist_ok=True)
    export(blocked, x_test[:2], out / "model.onnx")
    np.savez(out / "test.npz", input=x_test, label=y_test)
    print(f"digits_blocked: test accuracy {accuracy:.4f}, middle layer density {mask.mean().item():.3f}")

    torch.manual_seed(SEED)
    dense = mlp(256)
    out = HERE / "digits_mlp"
    out.mkdir(exist_ok=True)
    export(dense, x_test[:2], out / "init.onnx")
    accuracy = train(dense, data, epochs=30)
    export(dense, x_test[:2], out / "model.onnx")
    np.savez(out / "test.npz", input=x_test, label=y_test)
    print(f"digits_mlp: test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
