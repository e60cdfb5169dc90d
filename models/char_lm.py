"""A character-level language model trained on the Python standard library's own source.

    python models/char_lm.py [--steps N]     # writes models/char_lm/ (see models/common.py)

Corpus: the top-level ``*.py`` modules of the running interpreter's standard library, sorted by name; every
8th file is held out for test, the rest are for training (split by file). The SHA-256 of the file names and
bytes is printed and stored in the model's metadata (``onnx_decomp.corpus_sha256``): another Python version
has another corpus. Characters outside printable ASCII, newline and tab map to one unknown symbol.

Test windows: the held-out text cut into non-overlapping windows of ``CONTEXT`` characters, in a seeded
order; the first ``CALIB`` are the calibration set (``calib.npz``/``labels.npz``), the next ``EVAL`` the
evaluation set every figure is measured on (disjoint from the calibration set).

Model: decoder-only, pre-norm transformer: token and learned position embeddings (d_model 256, context
128), 4 blocks of causal self-attention (8 heads; separate q, k, v and output projections, so heads can be
cut apart) and a 256 -> 1024 -> 256 GELU FFN, each with a residual; final LayerNorm and a linear head.
PyTorch default init (recorded). AdamW lr 2e-3, weight decay 0.01, linear warm-up over ``WARMUP`` steps and
cosine decay to zero over ``STEPS`` steps of 32 random training windows, seeded, two CPU threads (about 13
minutes on this 2-core machine). Metrics on the evaluation windows: next-character accuracy (every position)
and bits per character.

Files: ``model.onnx`` (dense, init recorded, dynamic batch, fixed context), ``init.onnx``, ``calib.npz``
(held-out windows keyed by input name ``tokens``), ``labels.npz`` (their next characters, keyed by output
name ``logits``).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnx_decomp.torch import finetune_under_mask, record_init
from onnx_decomp_models.common import HERE, deterministic, run_onnx, save_data, save_model, warmup_cosine

OUT = HERE / "char_lm"
SEED, CONTEXT, D_MODEL, HEADS, FFN, LAYERS = 0, 128, 256, 8, 1024, 4
BATCH, STEPS, LR, WARMUP, TEST_EVERY, CALIB, EVAL = 32, 1000, 2e-3, 100, 8, 512, 1024
STEPS_PER_EPOCH = 100
CORPUS_KEY = "onnx_decomp.corpus_sha256"
ALPHABET = "\n\t" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(ALPHABET)
VOCAB = len(ALPHABET) + 1


def corpus(root: Path = Path(sysconfig.get_paths()["stdlib"])) -> tuple[str, str, str]:
    """Training text, test text (every ``TEST_EVERY``-th sorted file) and the corpus digest."""
    files = sorted(root.glob("*.py"))
    digest = hashlib.sha256()
    train, test = [], []
    for index, path in enumerate(files):
        text = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + text)
        (test if index % TEST_EVERY == TEST_EVERY - 1 else train).append(text.decode("utf-8", "replace"))
    return "\n".join(train), "\n".join(test), digest.hexdigest()


def encode(text: str) -> np.ndarray:
    table = np.full(max(map(ord, text)) + 1, UNKNOWN, np.int64)
    for index, char in enumerate(ALPHABET):
        if ord(char) < len(table):
            table[ord(char)] = index
    return table[np.frombuffer(text.encode("utf-32-le"), np.uint32)]


def test_windows(tokens: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Calibration and evaluation windows ``(inputs [n, CONTEXT], next characters [n, CONTEXT])`` of the test
    text (module docstring)."""
    usable = (len(tokens) - 1) // CONTEXT
    x = tokens[:usable * CONTEXT].reshape(usable, CONTEXT)
    y = tokens[1:usable * CONTEXT + 1].reshape(usable, CONTEXT)
    order = np.random.default_rng(SEED).permutation(usable)
    calib, evaluation = order[:CALIB], order[CALIB:CALIB + EVAL]
    return (x[calib], y[calib]), (x[evaluation], y[evaluation])


class RandomWindows:
    """``epochs`` passes of ``steps`` batches ``(inputs, next characters)`` of ``batch`` windows at random
    offsets of ``tokens``, drawn from a generator seeded with ``seed`` (the same batches on every run)."""

    def __init__(self, tokens: np.ndarray, steps: int, batch: int = BATCH, seed: int = SEED):
        self.data, self.steps, self.batch = torch.from_numpy(tokens), steps, batch
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        for _ in range(self.steps):
            offsets = torch.randint(0, len(self.data) - CONTEXT - 1, (self.batch,), generator=self.generator)
            windows = torch.stack([self.data[o:o + CONTEXT + 1] for o in offsets.tolist()])
            yield windows[:, :-1], windows[:, 1:]


def next_char_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


class Block(nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + ffn(ln(x)). Heads are ``head_dim`` wide and counted from the
    query projection's outputs, so a block whose heads or FFN units were pruned away still runs."""

    def __init__(self, d_model: int = D_MODEL, heads: int = HEADS, ffn: int = FFN):
        super().__init__()
        self.head_dim = d_model // heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.up, self.down = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        heads = [p(x).view(batch, length, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v)]
        mixed = nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
        return self.o(mixed.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class CharLM(nn.Module):
    """Embeddings -> blocks -> LayerNorm -> logits over the alphabet, for every position. The defaults are
    the bundled model; tests build tiny ones."""

    def __init__(self, d_model: int = D_MODEL, heads: int = HEADS, ffn: int = FFN, layers: int = LAYERS,
                 context: int = CONTEXT, vocab: int = VOCAB):
        super().__init__()
        self.token, self.position = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, ffn) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def scores(logits: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Next-character accuracy and bits per character of ``logits [n, length, vocab]`` (float64 log-softmax)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, target[..., None], -1)
    return float(np.mean(logits.argmax(-1) == target)), float(-picked.mean() / math.log(2))


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[start:start + batch])).numpy()
                           for start in range(0, len(x), batch)])


def train_dense(model: nn.Module, tokens: np.ndarray, steps: int = STEPS) -> list[float]:
    """``warmup_cosine`` at ``LR`` over ``WARMUP`` (module docstring); mean loss per epoch."""
    optimizer, schedule = warmup_cosine(model, LR, WARMUP, steps)
    epochs = max(1, steps // STEPS_PER_EPOCH)
    return finetune_under_mask(model, next_char_loss, RandomWindows(tokens, steps // epochs), epochs=epochs,
                               optimizer=optimizer, scheduler=schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    deterministic(SEED)
    train_text, test_text, digest = corpus()
    train_tokens, test_tokens = encode(train_text), encode(test_text)
    (x_calib, y_calib), (x_eval, y_eval) = test_windows(test_tokens)
    print(f"corpus sha256 {digest}: {len(train_tokens):,} training chars, {len(test_tokens):,} test chars; "
          f"{len(x_calib)} calibration and {len(x_eval)} evaluation windows of {CONTEXT}")
    model = CharLM()
    init = record_init(model)
    start = time.perf_counter()
    losses = train_dense(model, train_tokens, args.steps)
    seconds = time.perf_counter() - start
    accuracy, bits = scores(torch_logits(model, x_eval), y_eval)
    save_data(OUT, "tokens", x_calib, "logits", y_calib)
    path = save_model(OUT, "model.onnx", model, init, x_calib[:2], "tokens", "logits", {CORPUS_KEY: digest})
    onnx_accuracy, onnx_bits = scores(run_onnx(path, {"tokens": x_eval}), y_eval)
    print(f"char LM, {sum(p.numel() for p in model.parameters()):,} parameters, {args.steps} steps in "
          f"{seconds:.0f} s (loss per {STEPS_PER_EPOCH} steps: {', '.join(f'{v:.3f}' for v in losses)}): "
          f"evaluation next-char accuracy {accuracy:.4f}, {bits:.4f} bits/char (ONNX Runtime {onnx_accuracy:.4f}, "
          f"{onnx_bits:.4f}); wrote {path}")


if __name__ == "__main__":
    main()
