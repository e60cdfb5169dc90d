"""A small transformer encoder trained to name the most frequent digit of a sequence.

    python models/seq_transformer.py     # writes models/seq_transformer/ (see models/common.py)

Task: a sequence of 16 digits (tokens 0-9) in which one digit, the label, occurs more often than any other
(5-8 times; the rest drawn uniformly from the other nine, each at most 4 times). 10 classes, chance 0.1.
20000 training sequences, 2000 held out, generated from a fixed seed.

Model: token embedding + learned position embedding (d_model 64), 2 post-norm encoder layers
(``nn.TransformerEncoderLayer``: 4-head self-attention and a 64 -> 128 -> 64 ReLU FFN, each with a
residual and LayerNorm, no dropout), mean over positions, linear head to 10 logits. Adam lr 1e-3, batch
128, 6 epochs, PyTorch default init (recorded: attention in-projections ``xavier-uniform``, linear
weights ``torch-linear``, embeddings ``normal(sigma=1)``). Seeded, two CPU threads, under a minute.

Then each layer's FFN chain (linear1 [128 x 64] -> ReLU -> linear2 [64 x 128]) is cut into k=4 co-clustered
blocks (``coclustered_plan``), the model fine-tuned 2 epochs under the mask and exported as ``blocked.onnx``.
"""

from __future__ import annotations

import numpy as np
import torch

from onnx_decomp.planning.coclustering import coclustered_plan
from onnx_decomp.torch import apply_block_mask, finetune_under_mask, record_init
from onnx_decomp_models.common import HERE, Batches, deterministic, predict, run_onnx, save_data, save_model

OUT = HERE / "seq_transformer"
SEED, LENGTH, SYMBOLS, D_MODEL, HEADS, FFN, LAYERS = 0, 16, 10, 64, 4, 128, 2
TRAIN, HELD_OUT, EPOCHS, BLOCKS, FINETUNE_EPOCHS = 20000, 2000, 6, 4, 2


class ModeClassifier(torch.nn.Module):
    """Embeddings -> 2 encoder layers -> mean over positions -> logits."""

    def __init__(self):
        super().__init__()
        self.token = torch.nn.Embedding(SYMBOLS, D_MODEL)
        self.position = torch.nn.Embedding(LENGTH, D_MODEL)
        layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = torch.nn.Linear(D_MODEL, SYMBOLS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.encoder(self.token(tokens) + self.position(positions)).mean(1))


def make_sequences(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences with a unique most frequent digit, and that digit (module docstring)."""
    tokens = np.empty((n, LENGTH), np.int64)
    labels = rng.integers(SYMBOLS, size=n)
    for i, label in enumerate(labels):
        count = rng.integers(5, 9)
        others = np.delete(np.arange(SYMBOLS), label)
        while True:
            rest = rng.choice(others, LENGTH - count)
            if np.bincount(rest, minlength=SYMBOLS).max() < count:
                break
        tokens[i] = rng.permutation(np.concatenate([np.full(count, label), rest]))
    return tokens, labels


def main() -> None:
    deterministic(SEED)
    rng = np.random.default_rng(SEED)
    x_train, y_train = make_sequences(rng, TRAIN)
    x_test, y_test = make_sequences(rng, HELD_OUT)
    model = ModeClassifier()
    init = record_init(model)
    batches, loss = Batches(x_train, y_train, 128), torch.nn.functional.cross_entropy
    finetune_under_mask(model, loss, batches, epochs=EPOCHS)  # no mask: dense training

    def accuracy() -> float:
        return float((predict(model, x_test).argmax(1) == y_test).mean())

    dense_accuracy = accuracy()
    save_data(OUT, "tokens", x_test, "logits", y_test)
    path = save_model(OUT, "model.onnx", model, init, x_test[:2], "tokens", "logits")
    onnx_accuracy = float((run_onnx(path, {"tokens": x_test}).argmax(1) == y_test).mean())

    plans = {}
    for index, layer in enumerate(model.encoder.layers):
        first, second = coclustered_plan(layer.linear1.weight.detach().numpy(),
                                         layer.linear2.weight.detach().numpy(), BLOCKS, seed=SEED)
        plans[f"encoder.layers.{index}.linear1.weight"] = first
        plans[f"encoder.layers.{index}.linear2.weight"] = second
    mask = apply_block_mask(model, plans)
    cut_accuracy = accuracy()
    finetune_under_mask(model, loss, batches, epochs=FINETUNE_EPOCHS, mask=mask)
    tuned_accuracy = accuracy()
    save_model(OUT, "blocked.onnx", model, init, x_test[:2], "tokens", "logits")
    print(f"mode of {LENGTH} digits, transformer d_model {D_MODEL} x {LAYERS} layers: held-out accuracy "
          f"{dense_accuracy:.4f} (ONNX Runtime {onnx_accuracy:.4f}, {len(y_test)} sequences, chance 0.1); "
          f"FFNs cut into {BLOCKS} blocks {cut_accuracy:.4f}, fine-tuned {FINETUNE_EPOCHS} epochs "
          f"{tuned_accuracy:.4f}; wrote {OUT}")


if __name__ == "__main__":
    main()
