"""A character-level language model trained on the Python standard library's own source.

    python models/char_lm.py [--steps N]     # writes models/char_lm/ (see models/common.py)

Corpus: the top-level ``*.py`` modules of the running interpreter's standard library, sorted by name; every
8th file is held out for test, the rest are for training (split by file). The SHA-256 of the file names and
bytes is printed and stored in the model's metadata (``onnx_decomp.corpus_sha256``): another Python version
has another corpus. Characters outside printable ASCII, newline and tab map to one unknown symbol.

Model: decoder-only, pre-norm transformer: token and learned position embeddings (d_model 256, context
128), 4 blocks of causal self-attention (8 heads; separate q, k, v and output projections, so heads can be
cut apart) and a 256 -> 1024 -> 256 GELU FFN, each with a residual; final LayerNorm and a linear head.
PyTorch default init (recorded). AdamW lr 2e-3 with linear warm-up and cosine decay, batch 32 random
windows, seeded, two CPU threads. Metrics on the held-out files: next-character accuracy and bits per char.

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

from onnx_decomp.torch import record_init
from onnx_decomp_models.common import HERE, deterministic, save_data, save_model

OUT = HERE / "char_lm"
SEED, CONTEXT, D_MODEL, HEADS, FFN, LAYERS = 0, 128, 256, 8, 1024, 4
BATCH, STEPS, LR, WARMUP, TEST_EVERY, CALIB = 32, 3000, 2e-3, 200, 8, 512
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


def windows(tokens: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` non-overlapping windows: inputs ``[count, CONTEXT]`` and next-char targets."""
    usable = (len(tokens) - 1) // CONTEXT
    count = min(count, usable)
    x = tokens[:count * CONTEXT].reshape(count, CONTEXT)
    y = tokens[1:count * CONTEXT + 1].reshape(count, CONTEXT)
    return x, y


class Block(nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.q, self.k, self.v, self.o = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.up, self.down = nn.Linear(D_MODEL, FFN), nn.Linear(FFN, D_MODEL)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        heads = [p(x).view(batch, length, HEADS, D_MODEL // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v)]
        mixed = nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
        return self.o(mixed.transpose(1, 2).reshape(batch, length, D_MODEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class CharLM(nn.Module):
    """Embeddings -> blocks -> LayerNorm -> logits over the alphabet, for every position."""

    def __init__(self):
        super().__init__()
        self.token, self.position = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm, self.head = nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 64) -> tuple[float, float]:
    """Next-character accuracy and bits per character."""
    model.eval()
    correct, nats = 0, 0.0
    for start in range(0, len(x), batch):
        logits = model(torch.from_numpy(x[start:start + batch]))
        target = torch.from_numpy(y[start:start + batch])
        correct += int((logits.argmax(-1) == target).sum())
        nats += float(nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), reduction="sum"))
    return correct / y.size, nats / y.size / math.log(2)


def train(model: nn.Module, tokens: np.ndarray, steps: int) -> None:
    """AdamW, linear warm-up then cosine decay, random windows drawn from torch's global generator."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    data = torch.from_numpy(tokens)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        offsets = torch.randint(0, len(data) - CONTEXT - 1, (BATCH,))
        batch = torch.stack([data[o:o + CONTEXT + 1] for o in offsets.tolist()])
        loss = nn.functional.cross_entropy(model(batch[:, :-1]).reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {float(loss):.3f}  {time.perf_counter() - start:6.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    deterministic(SEED)
    train_text, test_text, digest = corpus()
    train_tokens, test_tokens = encode(train_text), encode(test_text)
    x_test, y_test = windows(test_tokens, CALIB)
    print(f"corpus sha256 {digest}: {len(train_tokens):,} training chars, {len(test_tokens):,} test chars, "
          f"{len(x_test)} test windows of {CONTEXT}")
    model = CharLM()
    init = record_init(model)
    train(model, train_tokens, args.steps)
    accuracy, bits = evaluate(model, x_test, y_test)
    save_data(OUT, "tokens", x_test, "logits", y_test)
    path = save_model(OUT, "model.onnx", model, init, x_test[:2], "tokens", "logits")
    print(f"char LM: test next-char accuracy {accuracy:.4f}, {bits:.3f} bits/char; wrote {path}")


if __name__ == "__main__":
    main()
