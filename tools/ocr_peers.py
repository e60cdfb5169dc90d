"""PaddleOCR's packaged models against ONNX Runtime's int8 quantization, fidelity and speed side by side.

    python tools/ocr_peers.py                      # rec, det and cls; batch 1 and 8
    python tools/ocr_peers.py --models rec --batches 1

Models (``onnx_decomp_models.ocr``, inputs fixed at rec 48 x 320, det 640 x 640, cls 48 x 192): the packaged
fp32 file (dense), quantized by ``onnx_decomp.runtime.quantize``: ``int8-static`` (QDQ, per-channel weights,
calibrated on the calibration images, Conv/MatMul/Gemm only) and the same on every op type ONNX Runtime's
quantizer knows; dynamic ``int8`` (per tensor) and ``int8-channel``; ``int4`` where the model has MatMuls
(rec). Fidelity on the evaluation images (``ocr_eval``) against the ground truth and
the dense model. Speed: ``bench_models``, one intra-op thread, that thread's CPU time, medians of
interleaved rounds, random inputs. Also where each model's multiply-accumulates are (``ocr_graph``).
Writes ``--out`` (default ``build/ocr/peers.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import onnx

from onnx_decomp.config import SessionConfig
from onnx_decomp.drivers.bench import bench_models
from onnx_decomp.report.table import table
from onnx_decomp.runtime.quantize import quantize
from onnx_decomp_models import ocr, ocr_data, ocr_eval, ocr_graph

TIMING = SessionConfig("cpu", threads=1, spin=False)


def peers(kind: str) -> dict[str, onnx.ModelProto]:
    """Dense and its quantized peers (module docstring), inputs at the fixed size."""
    dense = ocr_graph.with_input_size(onnx.load(ocr.model_path(kind)), ocr.SIZES[kind])
    calibration = ocr_data.calibration(kind)
    models = {"dense": dense,
              "int8-static": quantize(dense, "int8-static", calibration),
              "int8-static, every op type": quantize(dense, "int8-static", calibration, op_types=None),
              "int8 (dynamic)": quantize(dense, "int8"),
              "int8-channel (dynamic)": quantize(dense, "int8-channel")}
    if any(node.op_type == "MatMul" for node in dense.graph.node):
        models["int4"] = quantize(dense, "int4")
    return models


def fidelity(kind: str, models: dict[str, onnx.ModelProto]) -> dict[str, dict[str, float]]:
    """Each model's scores on the evaluation images against the truth and the dense model."""
    split = ocr_data.splits()[1]
    dense = ocr_eval.predict(kind, models["dense"], split)
    return {name: ocr_eval.scores(kind, ocr_eval.predict(kind, model, split), split, dense)
            for name, model in models.items()}


def speed(models: dict[str, onnx.ModelProto], batches: list[int]) -> dict[str, dict[int, tuple[float, float]]]:
    """(median ms, speedup over dense) per model and batch size."""
    report = bench_models(models, batches, TIMING, clock="cpu", flop_sources={name: "dense" for name in models})
    result: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in models}
    for row in report.results:
        result[row.model][row.batch] = (row.median_ms, row.speedup)
    return result


def quantized_ops(model: onnx.ModelProto) -> str:
    """The op types quantization added or turned into integer ops, counted."""
    counts = Counter(n.op_type for n in model.graph.node)
    return ", ".join(f"{op} {counts[op]}" for op in ("QuantizeLinear", "DequantizeLinear", "ConvInteger",
                                                       "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits")
                     if counts[op])


def mac_rows(kinds: list[str]) -> list[tuple]:
    rows = [("model", *ocr_graph.CONV_KINDS, "ConvTranspose", "MatMul", "total (M MACs per image)")]
    for kind in kinds:
        macs = ocr_graph.mac_split(ocr_graph.with_input_size(onnx.load(ocr.model_path(kind)), ocr.SIZES[kind]))
        total = sum(macs.values())
        rows.append((f"{kind} {ocr.SIZES[kind][0]}x{ocr.SIZES[kind][1]}",
                     *(f"{v / 1e6:.1f} ({v / total:.0%})" for v in macs.values()), f"{total / 1e6:.1f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["rec", "det", "cls"], choices=list(ocr.MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path("build/ocr/peers.json"))
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    print(table(mac_rows(args.models)))
    results = {}
    for kind in args.models:
        models = peers(kind)
        scores, times = fidelity(kind, models), speed(models, args.batches)
        results[kind] = {name: {"fidelity": scores[name], "ops": quantized_ops(models[name]),
                                "speed": {str(b): t for b, t in times[name].items()}} for name in models}
        figures = list(scores["dense"])
        rows = [("model", *figures, *(f"batch {b}: ms, x dense" for b in args.batches), "quantized ops")]
        rows += [(name, *(f"{scores[name].get(f, float('nan')):.4f}" for f in figures),
                  *(f"{times[name][b][0]:.4g}, {times[name][b][1]:.2f}x" for b in args.batches),
                  results[kind][name]["ops"]) for name in models]
        print(f"\n{kind}: fidelity on {len(ocr_data.splits()[1].crops)} evaluation lines / "
              f"{len(ocr_data.splits()[1].pages)} pages; speed one thread, CPU time\n{table(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
