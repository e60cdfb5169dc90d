"""PaddleOCR annealed (channels removed, low rank) against fp32 and ONNX Runtime's static int8: fidelity and speed
side by side, against issue 18's targets.

    python tools/ocr_anneal.py                                         # rec and det, batch 1 and 8
    python tools/ocr_anneal.py --models rec --metric top1 --tolerance 0.03 --families channels,lowrank

Per model (``onnx_decomp_models.ocr``; inputs fixed at rec 48 x 320, det 640 x 640): ``anneal`` on the committed
calibration images (``models/ocr/<kind>_calib.npz``: ``--held-out`` of them judge the result, the rest tune)
with ``--families`` under ``--metric`` and ``--tolerance`` (per model: ``rec=...,det=...`` or one value), the
time gate at the benchmark's batch sizes; then ONNX Runtime's ``int8-static`` (``runtime.quantize``: QDQ,
per-channel weights, Conv/MatMul/Gemm, the same calibration images) of the dense and of the annealed model.
Fidelity on the evaluation split (``ocr_eval``; rec: character error rate and exact lines; det: box F1 at
IoU 0.5 against the dense model's boxes). Speed: ``bench_models`` (one intra-op thread, that thread's CPU
time, medians of interleaved rounds, random inputs). Targets: rec CER at most 0.5 points above dense, det box
F1 against dense at least 0.98; at least 1.5x faster than fp32 and 1.2x faster than int8-static alone, at
every batch size, by the annealed model alone or quantized. Writes ``--out`` (default ``build/ocr/anneal.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnx

import onnx_decomp
from onnx_decomp.config import AnnealConfig, GateConfig, SessionConfig
from onnx_decomp.drivers.bench import bench_models
from onnx_decomp.report.table import table
from onnx_decomp.runtime.quantize import quantize
from onnx_decomp_models import ocr, ocr_data, ocr_eval, ocr_graph

TIMING = SessionConfig("cpu", threads=1, spin=False)
CALIB = Path(__file__).parents[1] / "models" / "ocr"
CER_SLACK, F1_FLOOR, OVER_FP32, OVER_INT8 = 0.005, 0.98, 1.5, 1.2


def per_model(text: str) -> dict[str, str]:
    """``rec=a,det=b`` or one value for every model."""
    if "=" not in text:
        return {kind: text for kind in ocr.MODELS}
    return dict(part.split("=", 1) for part in text.split(","))


def models(kind: str, args) -> tuple[dict[str, onnx.ModelProto], dict]:
    """Dense, its int8-static peer, the annealed model and it quantized; and the annealing's summary."""
    dense = ocr_graph.with_input_size(onnx.load(ocr.model_path(kind)), ocr.SIZES[kind])
    calib = dict(np.load(CALIB / f"{kind}_calib.npz"))
    start = time.perf_counter()
    config = AnnealConfig(metric=per_model(args.metric)[kind], tolerance=float(per_model(args.tolerance)[kind]),
                          families=tuple(args.families.split(",")), held_out=args.held_out)
    annealed, report = onnx_decomp.anneal(dense, calib, config=config, input_shapes={"x": [1, 3, *ocr.SIZES[kind]]},
                                          gate=GateConfig(batches=tuple(args.batches)), session=TIMING)
    summary = {"seconds": round(time.perf_counter() - start), "mac_reduction": report.final.mac_reduction,
               "validation": report.final.validation, "tuning": report.final.tuning,
               "structures": [f"{s.candidate.unit} {s.candidate.structure}" for s in report.accepted],
               "convs": [note for note in report.notes if note.startswith("Conv ")]}
    return {"dense": dense, "int8-static": quantize(dense, "int8-static", calib), "annealed": annealed,
            "annealed + int8-static": quantize(annealed, "int8-static", calib)}, summary


def fidelity(kind: str, found: dict[str, onnx.ModelProto]) -> dict[str, dict[str, float]]:
    split = ocr_data.splits()[1]
    dense = ocr_eval.predict(kind, found["dense"], split)
    return {name: ocr_eval.scores(kind, ocr_eval.predict(kind, model, split), split, dense)
            for name, model in found.items()}


def meets(kind: str, scores: dict[str, float], dense: dict[str, float]) -> bool:
    if kind == "rec":
        return scores["CER"] <= dense["CER"] + CER_SLACK
    return scores["F1 vs dense"] >= F1_FLOOR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["rec", "det"], choices=["rec", "det"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--families", default="channels,lowrank")
    parser.add_argument("--metric", default="rec=top1,det=rel-l2")
    parser.add_argument("--tolerance", default="rec=0.03,det=0.05")
    parser.add_argument("--held-out", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("build/ocr/anneal.json"))
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    results = {}
    for kind in args.models:
        found, summary = models(kind, args)
        scores = fidelity(kind, found)
        report = bench_models(found, args.batches, TIMING, clock="cpu")
        samples = {(r.model, r.batch): np.array(r.samples_ms) for r in report.results}
        speed = {name: {b: {"x fp32": float(np.median(samples["dense", b] / samples[name, b])),
                            "x int8": float(np.median(samples["int8-static", b] / samples[name, b]))}
                        for b in args.batches} for name in found}
        targets = {name: meets(kind, scores[name], scores["dense"]) and all(
            s["x fp32"] >= OVER_FP32 and s["x int8"] >= OVER_INT8 for s in speed[name].values())
            for name in ("annealed", "annealed + int8-static")}
        results[kind] = {"anneal": summary, "fidelity": scores, "speed": speed, "target met": targets}
        figures = list(scores["dense"])
        rows = [("model", *figures, *(f"b{b} {what}" for b in args.batches for what in ("x fp32", "x int8")), "target")]
        rows += [(name, *(f"{scores[name][f]:.4f}" for f in figures),
                  *(f"{speed[name][b][what]:.2f}x" for b in args.batches for what in ("x fp32", "x int8")),
                  {True: "met", False: "not met"}.get(targets.get(name), "")) for name in found]
        print(f"\n{kind}: {summary['mac_reduction']:.2f}x fewer MACs, validation {summary['validation']:.4g}, "
              f"{summary['seconds']} s; {report.rounds} timing rounds\n{table(rows)}")
        print("\n".join(summary["structures"] + summary["convs"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
