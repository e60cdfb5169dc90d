"""all-MiniLM-L6-v2 against ONNX Runtime's own compression, side by side in one run; and how fast smaller
MiniLM structures would run under int8.

    python tools/minilm_peers.py                  # dense, int8 per tensor / per channel, int4: fidelity and speed
    python tools/minilm_peers.py --feasibility    # FFN halved, + low-rank attention: speed fp32 and int8

Models (the dense export in ``--work``, default ``build/minilm``: ``minilm.ensure_model``): the dense model
quantized by every scheme of ``onnx_decomp.runtime.quantize`` (int8 dynamic per tensor and per channel, int4
``MatMulNBits`` block 32 symmetric at ``accuracy_level`` 4, static QDQ int8 calibrated on ``calib.npz``).
Feasibility (speed only: the kept units and the factors are not fitted to any data): every FFN's hidden
size cut to its first ``hidden`` units by slicing the weights; every attention projection (q, k, v, output)
replaced by two MatMuls of its rank-``r`` truncated SVD; each also quantized int8 per channel.

Fidelity: ``minilm_eval`` (1000 docstring pairs, batch 1, sequence 128): recall@1, MRR, mean cosine to the
dense model. MACs: MatMul multiply-accumulates of one sequence of 128 (a quantized model counts its float
source's; ``model_stats`` at the shapes ONNX Runtime gives). Speed: ``bench_models``, one intra-op thread, that
thread's CPU time, medians over interleaved rounds of the per-round time ratio, at batch 1 and 32 on the first
rows of ``eval.npz`` (sequence 128).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_decomp import SessionConfig
from onnx_decomp.cost.model_stats import counted_shapes, model_stats
from onnx_decomp.drivers.bench import bench_models
from onnx_decomp.io.shapes import InputSpec
from onnx_decomp.report.table import table
from onnx_decomp.runtime.quantize import quantize
from onnx_decomp_models import minilm
from onnx_decomp_models.minilm_data import OUT
from onnx_decomp_models.minilm_eval import Fidelity, embed, eval_inputs, evaluate, retrieval

BATCHES, SEQUENCE, D_MODEL, FFN = (1, 32), minilm.SEQUENCE, 384, 1536
FEASIBILITY = {"ffn768": (768, None), "ffn768+r96": (768, 96), "ffn512+r64": (512, 64)}
SCHEMES = {"int8 per tensor": "int8", "int8 per channel": "int8-channel", "int4 block 32": "int4",
           "int8 static": "int8-static"}


def macs(model: onnx.ModelProto) -> int:
    """MatMul multiply-accumulates of one sequence of ``SEQUENCE`` tokens."""
    feeds = {name: array[:1] for name, array in eval_inputs().items()}
    specs = [InputSpec(name, array.dtype, array.shape) for name, array in feeds.items()]
    return model_stats(model, counted_shapes(model, specs, feeds)).matmul_flops // 2


def peer_models(dense: onnx.ModelProto, names=tuple(SCHEMES)) -> dict[str, onnx.ModelProto]:
    """``dense`` and its quantized peers of ``names``."""
    calib = dict(np.load(OUT / "calib.npz"))
    return {"dense fp32": dense, **{name: quantize(dense, SCHEMES[name], calib) for name in names}}


def shrink_ffn(model: onnx.ModelProto, hidden: int) -> onnx.ModelProto:
    """Every FFN cut to its first ``hidden`` units: the up weight's columns, its bias, the down weight's rows."""
    cuts = {(D_MODEL, FFN): np.s_[:, :hidden], (FFN,): np.s_[:hidden], (FFN, D_MODEL): np.s_[:hidden]}
    counts = dict.fromkeys(cuts, 0)
    for index, tensor in enumerate(model.graph.initializer):
        shape = tuple(tensor.dims)
        if shape in cuts:
            counts[shape] += 1
            cut = numpy_helper.to_array(tensor)[cuts[shape]]
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(cut), tensor.name))
    if set(counts.values()) != {6}:
        raise ValueError(f"expected 6 FFN weights of each shape, found {counts}")
    del model.graph.value_info[:]
    return model


def low_rank_attention(model: onnx.ModelProto, rank: int) -> onnx.ModelProto:
    """Every MatMul with a ``[D_MODEL, D_MODEL]`` weight (q, k, v and output projections) replaced by
    ``x @ A @ B``, ``A B`` its rank-``rank`` truncated SVD."""
    weights = {t.name: t for t in model.graph.initializer if tuple(t.dims) == (D_MODEL, D_MODEL)}
    nodes, replaced = [], 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        u, s, vt = np.linalg.svd(numpy_helper.to_array(weights[node.input[1]]).astype(np.float64))
        first, second, middle = f"{node.input[1]}_a", f"{node.input[1]}_b", f"{node.output[0]}_low_rank"
        model.graph.initializer.extend([numpy_helper.from_array((u[:, :rank] * s[:rank]).astype(np.float32), first),
                                        numpy_helper.from_array(vt[:rank].astype(np.float32), second)])
        nodes += [helper.make_node("MatMul", [node.input[0], first], [middle], name=f"{node.name}_a"),
                  helper.make_node("MatMul", [middle, second], list(node.output), name=f"{node.name}_b")]
        replaced += 1
    if replaced != 24:
        raise ValueError(f"expected 24 attention projections, found {replaced}")
    kept = [t for t in model.graph.initializer if t.name not in weights]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def speed(models: dict[str, onnx.ModelProto], sources: dict[str, str]) -> dict:
    """``{(batch, name): time of each round in ms}`` (module rule)."""
    report = bench_models(models, BATCHES, SessionConfig(provider="cpu", threads=1), clock="cpu",
                          flop_sources=sources, inputs=eval_inputs())
    return {(r.batch, r.model): np.array(r.samples_ms) for r in report.results}


def ratio(times: dict, batch: int, reference: str, name: str) -> str:
    return f"{np.median(times[batch, reference] / times[batch, name]):.2f}x"


def peers(work: Path) -> None:
    dense = onnx.load(str(minilm.ensure_model(work / "model.onnx")))
    models = peer_models(dense)
    start = time.perf_counter()
    reference = embed(dense)
    fidelity = {"dense fp32": Fidelity(*retrieval(reference), cosine=1.0)}
    fidelity.update({name: evaluate(model, reference) for name, model in list(models.items())[1:]})
    evaluated = time.perf_counter() - start
    start = time.perf_counter()
    times = speed(models, dict.fromkeys(models, "dense fp32"))
    timed = time.perf_counter() - start
    dense_macs = macs(dense)
    rows = [("model", "recall@1", "MRR", "cosine to dense", "MatMul GMACs", *(f"speed b{b}" for b in BATCHES),
             *(f"ms b{b}" for b in BATCHES))]
    for name in models:
        f = fidelity[name]
        rows.append((name, f"{f.recall_at_1:.3f}", f"{f.mrr:.3f}", f"{f.cosine:.4f}", f"{dense_macs / 1e9:.3f}",
                     *(ratio(times, b, "dense fp32", name) for b in BATCHES),
                     *(f"{np.median(times[b, name]):.1f}" for b in BATCHES)))
    print(table(rows))
    print(f"fidelity on {len(reference) // 2} pairs in {evaluated:.0f} s; speed in {timed:.0f} s (sequence "
          f"{SEQUENCE}, one thread, CPU clock; speed: median per-round ratio to dense fp32)")


def feasibility(work: Path) -> None:
    path = minilm.ensure_model(work / "model.onnx")
    models = peer_models(onnx.load(str(path)), ("int8 per tensor", "int8 per channel"))
    sources = {name: "dense fp32" for name in models}
    for name, (hidden, rank) in FEASIBILITY.items():
        model = shrink_ffn(onnx.load(str(path)), hidden)  # a fresh copy: the cut works in place
        models[name], sources[name] = low_rank_attention(model, rank) if rank else model, name
        models[f"{name} int8"], sources[f"{name} int8"] = quantize(models[name], "int8-channel"), name
    counts = {name: macs(models[name]) for name in set(sources.values())}
    start = time.perf_counter()
    times = speed(models, sources)
    rows = [("model", "MatMul GMACs", *(f"vs dense b{b}" for b in BATCHES),
             *(f"vs int8/channel b{b}" for b in BATCHES), *(f"ms b{b}" for b in BATCHES))]
    for name in models:
        rows.append((name, f"{counts[sources[name]] / 1e9:.3f}", *(ratio(times, b, "dense fp32", name) for b in BATCHES),
                     *(ratio(times, b, "int8 per channel", name) for b in BATCHES),
                     *(f"{np.median(times[b, name]):.1f}" for b in BATCHES)))
    print(table(rows))
    print(f"speed in {time.perf_counter() - start:.0f} s (sequence {SEQUENCE}, one thread, CPU clock; ratios: "
          "medians of per-round time ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feasibility", action="store_true", help="structure + int8 speed instead of the peers")
    parser.add_argument("--work", type=Path, default=minilm.MODEL.parent)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log progress on the root logger
    (feasibility if args.feasibility else peers)(args.work)


if __name__ == "__main__":
    main()
