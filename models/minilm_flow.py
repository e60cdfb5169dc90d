"""MiniLM's side of the end-to-end comparison (``tools/minilm_pipeline.py``): the pretrained model in
PyTorch, one fine-tuning budget for every method, structured pruning at a MAC budget, and the export.

Rules:
- Training texts: every docstring of the standard library's calibration-side modules
  (``minilm_data.is_calibration``; no evaluation pair comes from those modules): each pair's summary and
  body, and the whole docstring of every other function or class; unique, in a seeded order.
- Fine-tuning (every method, the same budget): distillation to the dense model's embeddings, loss
  ``1 - cosine`` averaged over the batch; ``steps`` batches of ``BATCH`` training texts (the same batches for
  every method, padded to their longest text, at most ``minilm.SEQUENCE`` tokens); AdamW lr ``FT_LR``,
  weight decay 0.01, ``FT_WARMUP`` steps of linear warm-up, cosine decay to zero; dropout off.
- Structured pruning (``comparison.pruned_widths`` in every layer): Torch-Pruning, whole heads of the
  query/key/value projections and FFN units, the embeddings' widths kept (so the residual width stays);
  first-order Taylor importance of an in-batch retrieval loss (summaries against their bodies, scale
  ``SCALE``, cross-entropy) on ``TAYLOR_BATCHES`` batches of calibration pairs (the distillation loss has no
  gradient at the dense model).
- Weight MACs: ``comparison.weight_macs`` (the 36 Linear layers).
"""

from __future__ import annotations

import ast
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from onnx_decomp.torch import AppliedStructure, finetune_under_mask, prune_structured
from onnx_decomp_models import minilm, minilm_data
from onnx_decomp_models.common import warmup_cosine
from onnx_decomp_models.comparison import pruned_widths

SEED, BATCH, FT_LR, FT_WARMUP, TAYLOR_BATCHES, SCALE = 0, 8, 1e-4, 10, 4, 20.0
D_MODEL, HEADS, HEAD_DIM, FFN, LAYERS = 384, 12, 32, 1536, 6


def model() -> minilm.SentenceEmbedder:
    """The pretrained model with dropout off (module rule)."""
    embedder = minilm.load()
    for module in embedder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return embedder


@lru_cache(maxsize=1)
def training_texts() -> tuple[str, ...]:
    """The module rule's training texts."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        module = ".".join(relative.with_suffix("").parts)
        if minilm_data.SKIPPED & set(relative.parts) or not minilm_data.is_calibration(module):
            continue
        for name, node in minilm_data.definitions(ast.parse(path.read_bytes())):
            docstring = ast.get_docstring(node)
            found = docstring and minilm_data.pair(module, name, docstring)
            texts += [found.summary, found.body] if found else [" ".join(docstring.split())] if docstring else []
    unique = sorted(set(texts))
    return tuple(unique[i] for i in np.random.default_rng(SEED).permutation(len(unique)))


def _tensors(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = minilm.tokenizer(None)
    tokenizer.enable_truncation(minilm.SEQUENCE)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(texts)
    return (torch.tensor([e.ids for e in encodings]), torch.tensor([e.attention_mask for e in encodings]))


@lru_cache(maxsize=2)
def distillation_batches(steps: int) -> tuple:
    """``steps`` batches ``(input_ids, attention_mask, dense embeddings)`` (module rule), cycling over the
    training texts."""
    texts, teacher = training_texts(), model().eval()
    batches = []
    for step in range(steps):
        chosen = [texts[(step * BATCH + i) % len(texts)] for i in range(BATCH)]
        ids, mask = _tensors(chosen)
        with torch.no_grad():
            batches.append((ids, mask, teacher(ids, mask)))
    return tuple(batches)


def cosine_loss(embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - nn.functional.cosine_similarity(embeddings, target).mean()


def finetune(embedder: nn.Module, steps: int, structure: Optional[AppliedStructure] = None) -> list[float]:
    """The one fine-tuning budget of every method (module rule); mean loss per tenth of the steps."""
    optimizer, schedule = warmup_cosine(embedder, FT_LR, FT_WARMUP, steps)
    batches = distillation_batches(steps)
    epochs = 10 if steps % 10 == 0 else 1
    per = len(batches) // epochs
    loader = _Epochs(batches, per)
    return finetune_under_mask(embedder, cosine_loss, loader, epochs=epochs, optimizer=optimizer,
                               scheduler=schedule, mask=structure)


class _Epochs:
    """The batches in order, ``per`` of them per pass, each pass taking the next ones."""

    def __init__(self, batches: tuple, per: int):
        self.batches, self.per, self.start = batches, per, 0

    def __iter__(self):
        chunk = self.batches[self.start:self.start + self.per]
        self.start += self.per
        return iter(chunk)


def retrieval_loss(embeddings: torch.Tensor, _target) -> torch.Tensor:
    """In-batch retrieval (module rule): the first half of the rows query the second half."""
    queries, bodies = embeddings.chunk(2)
    return nn.functional.cross_entropy(SCALE * queries @ bodies.T, torch.arange(len(queries)))


def taylor_batches() -> list[tuple]:
    """``TAYLOR_BATCHES`` batches of calibration pairs: ``(input_ids, attention_mask, None)``, summaries then
    their bodies."""
    pairs = minilm_data.split(minilm_data.corpus_pairs()[0])[0]
    size = len(pairs) // TAYLOR_BATCHES
    return [(*_tensors(minilm_data.texts(pairs[i * size:(i + 1) * size])), None) for i in range(TAYLOR_BATCHES)]


def prune_to(embedder: minilm.SentenceEmbedder, budget: float) -> tuple[int, int]:
    """Heads and FFN units pruned alike in every layer to the weight MAC ``budget`` (module rule); returns
    (heads kept, FFN units kept) per layer."""
    heads, units = pruned_widths(D_MODEL, HEADS, HEAD_DIM, FFN, LAYERS, budget)
    layers = embedder.bert.encoder.layer
    num_heads = {p: HEADS for layer in layers for p in (layer.attention.self.query, layer.attention.self.key,
                                                         layer.attention.self.value)}
    embeddings = embedder.bert.embeddings
    ignored = [embeddings.word_embeddings, embeddings.position_embeddings, embeddings.token_type_embeddings]
    example = _tensors(["An example sentence.", "Another one."])
    prune_structured(embedder, example, num_heads, ignored, 1 - heads / HEADS, 1 - units / FFN, retrieval_loss,
                     taylor_batches())
    return layers[0].attention.self.query.out_features // HEAD_DIM, layers[0].intermediate.dense.out_features


def export_model(embedder: nn.Module, path: Path) -> Path:
    """``embedder`` (any structure) written as ``minilm.export`` writes the dense model, without its nulls."""
    return minilm.export(embedder, path, record=False)


def block_layers(embedder: nn.Module) -> dict[str, tuple[int, int]]:
    """Every Linear of the encoder: module path -> ``(out, in)``."""
    return {name: (m.out_features, m.in_features) for name, m in embedder.named_modules()
            if isinstance(m, nn.Linear) and ".encoder." in f".{name}"}


def calibration_batches(size: int = 32) -> list[dict]:
    """``models/minilm/calib.npz`` in batches of ``size`` rows, keyed by input name."""
    with np.load(minilm_data.OUT / "calib.npz") as data:
        arrays = {name: data[name] for name in minilm.INPUTS}
    rows = len(arrays[minilm.INPUTS[0]])
    return [{k: v[s:s + size] for k, v in arrays.items()} for s in range(0, rows, size)]
