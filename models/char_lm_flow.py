"""The char LM's side of the end-to-end comparison (``tools/char_lm_pipeline.py``): the trained model back in
PyTorch, one fine-tuning budget for every method, the peers at a given MatMul budget, and evaluation.

Rules:
- The trained weights come back from ``models/char_lm/model.onnx``: a model made with the training seed
  holds the recorded initialization, which binds to ``init.onnx`` by value, and so every initializer name
  of the exported model to its parameter (``onnx_decomp.torch.load_initializers``).
- Fine-tuning (every method, the same budget): AdamW lr ``FT_LR``, weight decay 0.01, ``FT_WARMUP`` steps of
  linear warm-up, cosine decay to zero, batches of 32 random training windows from a generator seeded
  with ``FT_SEED`` (the same batches for every method), masked entries held at zero where a mask or a
  structure with block masks is given.
- Weight MACs and the peers' rules at a budget: ``comparison`` (the embeddings gather; the attention's own
  products are not weights and are the same for every method except head pruning); low rank and pruning
  act on the blocks' Linear layers.
- Calibration for annealing: ``CALIBRATION`` windows at seeded random offsets of the training text, so
  that annealing, fine-tuning and evaluation never see the evaluation windows.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
import torch
from torch import nn

from onnx_decomp.config import SessionConfig
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp.torch import (AppliedStructure, BlockMask, bind_initializers, export, finetune_under_mask,
                               load_initializers, prune_structured)
from onnx_decomp.torch.binding import float_initializers
from onnx_decomp_models import char_lm
from onnx_decomp_models.char_lm import CONTEXT, OUT, SEED, CharLM, RandomWindows, next_char_loss
from onnx_decomp_models.common import deterministic, warmup_cosine
from onnx_decomp_models.comparison import pruned_widths, weight_macs

FT_LR, FT_WARMUP, FT_SEED, CALIBRATION, TAYLOR_BATCHES = 5e-4, 20, 1, 256, 8


@lru_cache(maxsize=1)
def tokens() -> tuple[np.ndarray, np.ndarray]:
    """Training and test text as tokens."""
    train, test, _ = char_lm.corpus()
    return char_lm.encode(train), char_lm.encode(test)


def evaluation_windows() -> tuple[np.ndarray, np.ndarray]:
    return char_lm.test_windows(tokens()[1])[1]


def calibration_windows(count: int = CALIBRATION) -> np.ndarray:
    """``count`` training windows at seeded random offsets (module rule)."""
    train = tokens()[0]
    offsets = np.random.default_rng(SEED + 2).integers(0, len(train) - CONTEXT, count)
    return np.stack([train[o:o + CONTEXT] for o in offsets])


def parameter_names(folder: Path = OUT) -> dict[str, tuple]:
    """Initializer name of ``folder/model.onnx`` -> the bindings to CharLM parameters (module rule)."""
    deterministic(SEED)
    fresh = CharLM()
    values = {name: p.detach().numpy() for name, p in fresh.named_parameters()}
    return bind_initializers(float_initializers(onnx.load(str(folder / "init.onnx"))), values)


def model() -> CharLM:
    """The trained model in PyTorch (``model_from_onnx`` of ``models/char_lm/model.onnx``)."""
    return model_from_onnx(OUT / "model.onnx")


def model_from_onnx(path: Path, folder: Path = OUT) -> CharLM:
    """A CharLM holding the weights of ``path``, a model with ``folder/model.onnx``'s initializer names
    (the trained model, or an annealed one)."""
    bindings = parameter_names(folder)
    model = CharLM()
    loaded = load_initializers(model, float_initializers(onnx.load(str(path))), bindings)
    missing = set(dict(model.named_parameters())) - set(loaded)
    if missing:
        raise ValueError(f"{path}: no weights for {sorted(missing)}")
    return model


def finetune(model: nn.Module, steps: int, mask: Optional[Union[BlockMask, AppliedStructure]] = None) -> list[float]:
    """The one fine-tuning budget of every method (module rule); mean loss per tenth of the steps."""
    optimizer, schedule = warmup_cosine(model, FT_LR, FT_WARMUP, steps)
    epochs = 10 if steps % 10 == 0 else 1
    return finetune_under_mask(model, next_char_loss, RandomWindows(tokens()[0], steps // epochs, seed=FT_SEED),
                               epochs=epochs, optimizer=optimizer, scheduler=schedule, mask=mask)


def block_layers(model: CharLM) -> dict[str, tuple[int, int]]:
    """Every block's Linear layers: module path -> ``(out, in)``."""
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("blocks.")}


def prune_to(model: CharLM, budget: float) -> tuple[int, int]:
    """Whole heads and FFN units pruned alike in every block (``comparison.pruned_widths``;
    ``onnx_decomp.torch.prune_structured``, Taylor importance on ``TAYLOR_BATCHES`` training batches) within
    the weight MAC ``budget``. Returns (heads kept, FFN units kept) per block."""
    block = model.blocks[0]
    d, heads, width = block.q.in_features, block.q.out_features // block.head_dim, block.up.out_features
    fixed = weight_macs(model) - sum(o * i for o, i in block_layers(model).values())
    kept_heads, kept_units = pruned_widths(d, heads, block.head_dim, width, len(model.blocks), budget - fixed)
    num_heads = {p: heads for b in model.blocks for p in (b.q, b.k, b.v)}
    batches = list(RandomWindows(tokens()[0], TAYLOR_BATCHES, seed=FT_SEED + 1))
    prune_structured(model, torch.from_numpy(calibration_windows(2)), num_heads, [model.token, model.position,
                     model.head], 1 - kept_heads / heads, 1 - kept_units / width, next_char_loss, batches)
    return kept_heads, model.blocks[0].up.out_features


def export_model(model: nn.Module, path: Path) -> Path:
    export(model, (torch.from_numpy(calibration_windows(2)),), path, input_names=["tokens"], output_names=["logits"])
    return path


def scores_of(model: onnx.ModelProto, threads: int = 2, batch: int = 64) -> tuple[float, float]:
    """Next-character accuracy and bits per character of an ONNX model on the evaluation windows."""
    session = make_session(model, SessionConfig("cpu", threads=threads))
    x, y = evaluation_windows()
    logits = np.concatenate([session.run(None, {"tokens": x[s:s + batch]})[0] for s in range(0, len(x), batch)])
    return char_lm.scores(logits, y)
