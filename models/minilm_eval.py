"""How well a MiniLM-like ONNX model retrieves docstring bodies from their summaries, and how close its
embeddings stay to the dense model's.

    python models/minilm_eval.py MODEL.onnx [DENSE.onnx]     # DENSE defaults to minilm.ensure_model()

Rule: the model embeds every row of ``models/minilm/eval.npz`` (``minilm_data``) alone, at batch 1 and
padded to 128 tokens as stored (dynamic quantization's activation scales then never mix texts), in ONNX
Runtime on the CPU; embeddings are L2-normalised again. Each summary queries all bodies by cosine: recall@1
is the share of summaries whose own body ranks first, MRR the mean of 1 / rank (rank: 1 + the bodies that
score strictly higher). Cosine to dense: the mean over all rows of the cosine between the model's and the
dense model's embeddings.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from onnx_decomp.config import SessionConfig
from onnx_decomp.io.model_io import ModelLike
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp_models import minilm
from onnx_decomp_models.minilm_data import OUT

EVAL_INPUTS = OUT / "eval.npz"


@dataclass(frozen=True)
class Fidelity:
    recall_at_1: float
    mrr: float
    cosine: float  # mean cosine to the dense model's embeddings


def eval_inputs() -> dict[str, np.ndarray]:
    with np.load(EVAL_INPUTS) as data:
        return {name: data[name] for name in minilm.INPUTS}


def embed(model: ModelLike, inputs: Optional[dict[str, np.ndarray]] = None,
          session: SessionConfig = SessionConfig(provider="cpu")) -> np.ndarray:
    """Unit-length embeddings of every row of ``inputs`` (default: the evaluation rows), one row per run."""
    inputs = eval_inputs() if inputs is None else inputs
    runner = make_session(model, session)
    rows = [runner.run(None, {name: array[i:i + 1] for name, array in inputs.items()})[0][0]
            for i in range(len(next(iter(inputs.values()))))]
    embeddings = np.array(rows, np.float64)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def retrieval(embeddings: np.ndarray) -> tuple[float, float]:
    """Recall@1 and MRR of summaries (the first half of the rows) querying bodies (the second half)."""
    queries, bodies = np.split(embeddings, 2)
    scores = queries @ bodies.T
    ranks = 1 + (scores > np.diag(scores)[:, None]).sum(1)
    return float(np.mean(ranks == 1)), float(np.mean(1 / ranks))


def evaluate(model: ModelLike, dense: Union[ModelLike, np.ndarray, None] = None) -> Fidelity:
    """The module rule for ``model`` against ``dense`` (a model, or its ``embed`` output; default: the
    exported dense MiniLM)."""
    if not isinstance(dense, np.ndarray):
        dense = embed(minilm.ensure_model() if dense is None else dense)
    embeddings = embed(model)
    recall, mrr = retrieval(embeddings)
    return Fidelity(recall, mrr, float(np.mean(np.sum(embeddings * dense, axis=1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dense", nargs="?")
    args = parser.parse_args()
    start = time.perf_counter()
    result = evaluate(args.model, args.dense)
    print(f"{args.model}: recall@1 {result.recall_at_1:.3f}, MRR {result.mrr:.3f}, mean cosine to dense "
          f"{result.cosine:.4f} ({len(eval_inputs()['input_ids']) // 2} pairs, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
