"""Plumbing the bundled training scripts share: determinism, batches, prediction, the files they write.

Every script writes ``models/<name>/``: ``model.onnx`` (trained, dense, exported with
``onnx_decomp.torch.export`` and its initialization recorded), ``init.onnx`` (the initial tensors),
``calib.npz`` (held-out inputs keyed by ONNX input name) and ``labels.npz`` (what those inputs should give,
keyed by ONNX output name: class indices for classifiers, target values for regressions). Training uses
``onnx_decomp.torch.finetune_under_mask``, with no mask for dense training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import math

import numpy as np
import onnx
import onnxruntime as ort
import torch

from onnx_decomp.torch import InitRecord, export
from onnx_decomp_passes import plan_from_support

HERE = Path(__file__).parent


def deterministic(seed: int, threads: int = 2) -> None:
    """Seed torch's global generator (model init, batch order) and fix the CPU thread count."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


class Batches:
    """Minibatches ``(x, y)`` in a new random order on every pass (torch's global generator)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, size: int):
        self.x, self.y, self.size = torch.from_numpy(x), torch.from_numpy(y), size

    def __iter__(self):
        for index in torch.randperm(len(self.x)).split(self.size):
            yield self.x[index], self.y[index]


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def run_onnx(path: Path, feeds: dict) -> np.ndarray:
    """The first output of the ONNX model at ``path`` in ONNX Runtime (CPU)."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def save_model(folder: Path, name: str, model: torch.nn.Module, init: InitRecord, example: np.ndarray,
               input_name: str, output_name: str, metadata: Optional[dict] = None) -> Path:
    """Export ``model`` to ``folder/name`` with ``init`` recorded and its tensors in ``folder/init.onnx``."""
    folder.mkdir(parents=True, exist_ok=True)
    export(model, (torch.from_numpy(example),), folder / name, init, reference_path=folder / "init.onnx",
           input_names=[input_name], output_names=[output_name], metadata=metadata)
    return folder / name


def save_data(folder: Path, input_name: str, calib: np.ndarray, output_name: str, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "calib.npz", **{input_name: calib})
    np.savez_compressed(folder / "labels.npz", **{output_name: labels})


def components(path: Path, initializer: str) -> int:
    """Independent blocks of an exported weight's nonzero pattern (``plan_from_support(W != 0)``)."""
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    return len(plan_from_support(weights[initializer] != 0).branches)


def warmup_cosine(model: torch.nn.Module, lr: float, warmup: int, steps: int):
    """AdamW (weight decay 0.01) at ``lr``, linear warm-up over ``warmup`` steps and cosine decay to zero over
    ``steps``: the optimizer and its per-step scheduler."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    return optimizer, schedule
