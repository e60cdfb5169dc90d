"""Planted CNNs (``onnx_decomp_models.cnn``) annealed: permuted channel blocks found and rewritten exactly, dead
channels removed losslessly (issue 18's planted targets).

    python tools/bench_cnn.py                    # both scenarios, time gate at batch 1 and 8

- blocks: the 1 x 1 Conv block-diagonal in 4 channel blocks under hidden permutations; ``anneal --families
  grouped`` at rel-L2 0.01; the blocks found against the planted ones (adjusted Rand index of the output
  channels), the form ONNX Runtime measured faster (grouped Conv or branches), the written model against the
  original on fresh inputs;
- dead: 8 of 32 channels dead in both channel spaces; ``anneal --families channels`` at rel-L2 1e-6 (lossless);
  the channels left and the written model against the original.
Fresh inputs: 64 samples the search never saw; "max abs" and "rel-L2" against the original in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from onnx import numpy_helper
from sklearn.metrics import adjusted_rand_score

import onnx_decomp
from onnx_decomp.config import AnnealConfig, GateConfig
from onnx_decomp.report.table import table
from onnx_decomp.runtime.sessions import make_session
from onnx_decomp_models import cnn


def difference(model, original) -> tuple[float, float]:
    """(max abs, rel-L2) of ``model`` against ``original`` on fresh inputs."""
    x = cnn.calibration(64, seed=99)
    new, old = (make_session(m).run(None, x)[0] for m in (model, original))
    return float(np.abs(new - old).max()), float(np.linalg.norm(new - old) / np.linalg.norm(old))


def planted_blocks(model) -> np.ndarray:
    """Each output channel's planted block, labelled by the first input channel its block reads."""
    w2 = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w2")
    return np.array([np.flatnonzero(row)[0] for row in w2.reshape(cnn.H, cnn.H) != 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    gate = GateConfig(batches=tuple(args.batches))
    rows = [("scenario", "found", "MACs /", "rewrite", "max abs vs original", "rel-L2 vs original", "exact vs masked")]
    for name, model, families, tolerance in (("4 permuted channel blocks", cnn.planted_cnn(blocks=4), ("grouped",), 0.01),
                                             ("8 of 32 channels dead", cnn.planted_cnn(dead=8), ("channels",), 1e-6)):
        out, report = onnx_decomp.anneal(model, cnn.calibration(), tolerance=tolerance, gate=gate,
                                         config=AnnealConfig(families=families), input_shapes={"x": [1, cnn.C, cnn.S, cnn.S]})
        plans = {site.node: plan for site, plan in report.plans.items()}
        if "conv2" in plans and families == ("grouped",):
            labels = np.zeros(cnn.H, int)
            for label, branch in enumerate(plans["conv2"].branches):
                labels[branch.rows] = label
            found = f"{len(plans['conv2'].branches)} blocks, ARI {adjusted_rand_score(planted_blocks(model), labels):.3f}"
        else:
            found = ", ".join(f"{node}: {plan.kept}" for node, plan in plans.items()) or "nothing"
        rewrite = "; ".join(note[len("Conv "):] for note in report.notes if note.startswith("Conv ")) or "smaller Convs"
        rows.append((name, found, f"{report.final.mac_reduction:.2f}", rewrite,
                     *(f"{v:.2e}" for v in difference(out, model)), "ok" if report.final.exact_ok else "FAILED"))
    print(table(rows))


if __name__ == "__main__":
    main()
