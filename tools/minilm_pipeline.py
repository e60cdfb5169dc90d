"""all-MiniLM-L6-v2 end to end, against the compression a user would pick instead; one command per stage.

    python tools/minilm_pipeline.py dense        # dense, int8 per tensor / per channel, int4
    python tools/minilm_pipeline.py anneal       # ours at --tolerances (1 - mean cosine), float and + int8
    python tools/minilm_pipeline.py finetune     # ours + --steps of distillation under each annealed structure
    python tools/minilm_pipeline.py control      # the dense model + --steps
    python tools/minilm_pipeline.py peers        # whitened low rank, plain SVD, pruning at ours' weight MACs
    python tools/minilm_pipeline.py bench        # every model written so far, side by side, batch 1 and 32
    python tools/minilm_pipeline.py report       # the table, models/minilm/tradeoff.png, targets, losses
    python tools/minilm_pipeline.py all

Stages: ``tools/benchmark.py``; everything goes to ``--work`` (default ``build/minilm``). Model:
``minilm.ensure_model()`` (``build/minilm/model.onnx``). Rules of the comparison (distillation, pruning):
``models/minilm_flow.py`` and ``models/comparison.py``. Annealing: ``--metric cosine`` on the sentence
embedding, ``models/minilm/calib.npz`` (128 pairs, half tune, half held out), cost gate at batch 1 and 32.
Scores (``minilm_eval``, 1000 docstring pairs at batch 1): recall@1, MRR, mean cosine to the dense model.
Speed: one intra-op thread, its CPU time, medians of per-round ratios, batch 1 and 32 of the evaluation rows
(sequence 128).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from onnx_decomp_models import minilm
from onnx_decomp_models import minilm_flow as flow
from onnx_decomp_models.comparison import Entry, ratio
from onnx_decomp_models.minilm_data import OUT
from onnx_decomp_models.minilm_eval import embed, eval_inputs, evaluate

from benchmark import DENSE, OURS, Benchmark, main

SHAPES = {name: [32, minilm.SEQUENCE] for name in minilm.INPUTS}


class MiniLMBenchmark(Benchmark):
    title = "all-MiniLM-L6-v2"
    work = minilm.MODEL.parent
    batches = (1, 32)
    quality, quality_label = "cosine", "mean cosine to the dense embeddings"
    columns = ("recall@1 (pp vs dense)", "MRR", "cosine to dense")
    metric = "cosine"
    tolerances = (0.01, 0.02, 0.04)
    flow = flow

    @cached_property
    def dense_path(self) -> Path:
        return minilm.ensure_model()

    @cached_property
    def dense_embeddings(self) -> np.ndarray:
        return embed(self.dense_path)

    def score(self, model):
        result = evaluate(model, self.dense_embeddings)
        return {"recall@1": result.recall_at_1, "mrr": result.mrr, "cosine": result.cosine}

    def cells(self, scores, dense):
        return [f"{scores['recall@1']:.3f} ({100 * (scores['recall@1'] - dense['recall@1']):+.1f})",
                f"{scores['mrr']:.3f}", f"{scores['cosine']:.4f}"]

    def sequence(self):
        return {name: array[:1] for name, array in eval_inputs().items()}

    def bench_inputs(self):
        return eval_inputs()

    def calibration(self):
        return dict(np.load(OUT / "calib.npz"))

    def anneal_options(self):
        return {"input_shapes": SHAPES}

    def targets(self, entries: dict[str, Entry], times: dict, int8: str) -> list[str]:
        """At a fidelity no worse than int8 alone (cosine and recall@1; ``int8``, the stronger scheme), 1.3x
        faster than int8 alone at batch 1 and 32."""
        alone = f"{DENSE} {int8}"
        bar = entries[alone].scores
        within = [n for n, e in entries.items() if e.method == OURS and e.scores["cosine"] >= bar["cosine"]
                  and e.scores["recall@1"] >= bar["recall@1"]]
        lines = []
        for batch in self.batches:
            best = max(within, key=lambda n: ratio(times, batch, alone, n), default=None)
            speed = ratio(times, batch, alone, best) if best else 0.0
            lines.append(f"target: at cosine >= {bar['cosine']:.4f} and recall@1 >= {bar['recall@1']:.3f} "
                         f"({alone}), batch {batch}: 1.3x over {alone} wanted, {speed:.2f}x by {best or 'none'} "
                         f"({'met' if speed >= 1.3 else 'not met'})")
        return lines


if __name__ == "__main__":
    main(MiniLMBenchmark(), __doc__)
