"""Block-by-block annealing of a 1.1B-parameter Llama-shaped model in bounded memory: peak memory against one
block's weights plus the calibration activations, time, and whether the planted structure is found.

    python tools/bench_by_block.py [--d 2048] [--layers 22] [--ffn 5632] [--heads 32] [--groups 8]
                                   [--samples 32] [--seq 64] [--tolerance 0.2] [--folder build/llama]

The model, synthetic (written once to ``--folder``, weights in external data, one tensor at a time):
token embedding (vocabulary ``--vocab``), ``--layers`` pre-norm layers of RMSNorm, multi-head causal
self-attention (q, k, v, o: ``d x d``, no RoPE) and a SwiGLU FFN (gate, up: ``d -> ffn``, down), each with
its residual Add, a final RMSNorm and a linear head; every MatMul weight is init noise U(-b, b),
b = 1/sqrt(fan_in), scaled by ``--noise``, plus, inside the blocks of a partition into ``--groups`` groups,
30% of the entries at 3-5 b: the residual stream's features, the attention heads and the FFN hidden units
are each split into ``--groups`` groups (features and hidden units shuffled), and every weight connects
group ``g`` to group ``g`` only, so the model is ``--groups`` independent sub-models but for RMSNorm's
shared scale. Defaults: d 2048, 22 layers, FFN 5632, 32 heads (Llama 2 / TinyLlama's shape with full
multi-head attention instead of grouped-query), vocabulary 256: 1.13B parameters, 4.5 GB float32.
Calibration: ``--samples`` random token sequences of ``--seq``, half tuning, half held out.

A fresh process runs ``onnx_decomp.anneal_by_block`` (``--families single``: the block family, which is
the structure planted; rel-l2 ``--tolerance`` end to end; flops gate) and prints the per-block table, the
peak resident memory (``VmHWM``; what the process gained after its imports is judged) against the
largest block's weights and the activations held, and per
weight the adjusted Rand index of the accepted partition against the planted one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


class Writer:
    """Initializers written one at a time to ``model.onnx.data``."""

    def __init__(self, folder: Path):
        self.path = folder / "model.onnx.data"
        self.handle = open(self.path, "wb")
        self.tensors: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        if array.size <= 1024:
            self.tensors.append(numpy_helper.from_array(array, name))
            return name
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                             data_location=TensorProto.EXTERNAL)
        for key, text in (("location", self.path.name), ("offset", str(self.handle.tell())),
                          ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=text)
        self.handle.write(np.ascontiguousarray(array).tobytes())
        self.tensors.append(tensor)
        return name


def planted(rows: np.ndarray, cols: np.ndarray, noise: float, rng) -> np.ndarray:
    """``W [out, in]``: init noise plus 30% of the in-group entries at 3-5 b (module docstring)."""
    bound = 1 / np.sqrt(len(cols))
    w = (rng.random((len(rows), len(cols)), dtype=np.float32) * 2 - 1) * np.float32(bound * noise)
    inside = (rows[:, None] == cols[None, :]) & (rng.random(w.shape, dtype=np.float32) < 0.3)
    strong = (rng.random(w.shape, dtype=np.float32) * 2 + 3) * np.float32(bound)
    w[inside] = (strong * np.where(rng.random(w.shape, dtype=np.float32) < 0.5, -1, 1))[inside]
    return w


def llama(folder: Path, args, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``folder/model.onnx`` (module docstring); returns each MatMul weight's planted (row, column)
    groups."""
    d, heads, ffn, g = args.d, args.heads, args.ffn, args.groups
    stream = rng.permutation(np.arange(d) * g // d)
    per_head = np.repeat(rng.permutation(np.arange(heads) * g // heads), d // heads)
    writer, nodes, groups = Writer(folder), [], {}

    def linear(x: str, name: str, rows: np.ndarray, cols: np.ndarray) -> str:
        groups[name] = (rows, cols)
        writer.add(name, planted(rows, cols, args.noise, rng).T.copy())  # MatMul holds W^T
        nodes.append(helper.make_node("MatMul", [x, name], [f"{name}.out"], name=f"{name}.matmul"))
        return f"{name}.out"

    def rmsnorm(x: str, name: str) -> str:
        writer.add(f"{name}.g", np.ones(d, np.float32))
        nodes.extend([helper.make_node("Mul", [x, x], [f"{name}.sq"]),
                      helper.make_node("ReduceMean", [f"{name}.sq"], [f"{name}.ms"], axes=[-1]),
                      helper.make_node("Add", [f"{name}.ms", "eps"], [f"{name}.mse"]),
                      helper.make_node("Sqrt", [f"{name}.mse"], [f"{name}.rms"]),
                      helper.make_node("Div", [x, f"{name}.rms"], [f"{name}.n"]),
                      helper.make_node("Mul", [f"{name}.n", f"{name}.g"], [f"{name}.out"])])
        return f"{name}.out"

    writer.add("eps", np.array(1e-5, np.float32))
    writer.add("scale", np.array(1 / np.sqrt(d // heads), np.float32))
    writer.add("heads_shape", np.array([0, 0, heads, d // heads], np.int64))
    writer.add("model_shape", np.array([0, 0, d], np.int64))
    writer.add("mask", np.triu(np.full((args.seq, args.seq), -1e9, np.float32), 1))
    writer.add("embedding", rng.standard_normal((args.vocab, d)).astype(np.float32))
    nodes.append(helper.make_node("Gather", ["embedding", "tokens"], ["x0"]))
    x = "x0"
    for i in range(args.layers):
        h = rmsnorm(x, f"l{i}.attn_norm")
        q, k, v = (linear(h, f"l{i}.{p}", per_head, stream) for p in "qkv")
        for p, t in (("q", q), ("k", k), ("v", v)):
            nodes.append(helper.make_node("Reshape", [t, "heads_shape"], [f"l{i}.{p}4"]))
        nodes += [helper.make_node("Transpose", [f"l{i}.q4"], [f"l{i}.qh"], perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", [f"l{i}.k4"], [f"l{i}.kh"], perm=[0, 2, 3, 1]),
                  helper.make_node("Transpose", [f"l{i}.v4"], [f"l{i}.vh"], perm=[0, 2, 1, 3]),
                  helper.make_node("MatMul", [f"l{i}.qh", f"l{i}.kh"], [f"l{i}.s0"]),
                  helper.make_node("Mul", [f"l{i}.s0", "scale"], [f"l{i}.s1"]),
                  helper.make_node("Add", [f"l{i}.s1", "mask"], [f"l{i}.s2"]),
                  helper.make_node("Softmax", [f"l{i}.s2"], [f"l{i}.p"], axis=-1),
                  helper.make_node("MatMul", [f"l{i}.p", f"l{i}.vh"], [f"l{i}.a"]),
                  helper.make_node("Transpose", [f"l{i}.a"], [f"l{i}.at"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"l{i}.at", "model_shape"], [f"l{i}.attn"])]
        o = linear(f"l{i}.attn", f"l{i}.o", stream, per_head)
        nodes.append(helper.make_node("Add", [x, o], [f"l{i}.x1"]))
        h = rmsnorm(f"l{i}.x1", f"l{i}.ffn_norm")
        hidden = rng.permutation(np.arange(ffn) * g // ffn)
        gate, up = linear(h, f"l{i}.gate", hidden, stream), linear(h, f"l{i}.up", hidden, stream)
        nodes += [helper.make_node("Sigmoid", [gate], [f"l{i}.sig"]),
                  helper.make_node("Mul", [gate, f"l{i}.sig"], [f"l{i}.silu"]),
                  helper.make_node("Mul", [f"l{i}.silu", up], [f"l{i}.h"])]
        down = linear(f"l{i}.h", f"l{i}.down", stream, hidden)
        nodes.append(helper.make_node("Add", [f"l{i}.x1", down], [f"l{i}.x2"]))
        x = f"l{i}.x2"
    head = linear(rmsnorm(x, "final_norm"), "head", np.arange(args.vocab) * g // args.vocab, stream)
    writer.handle.close()
    graph = helper.make_graph(nodes, "llama", [helper.make_tensor_value_info("tokens", TensorProto.INT64,
                                                                             ["N", args.seq])],
                              [helper.make_tensor_value_info(head, TensorProto.FLOAT, ["N", args.seq, args.vocab])],
                              writer.tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    return groups


def measure(folder: Path, args) -> None:
    """The measuring process: anneal block by block, then the table, memory and the planted check."""
    import onnx_decomp
    from onnx_decomp.drivers.by_block import peak_rss
    from onnx_decomp.search.stability import adjusted_rand_index

    baseline = peak_rss()
    start = time.perf_counter()
    config = onnx_decomp.AnnealConfig(metric="rel-l2", tolerance=args.tolerance, families=("single",), bootstrap=0)
    report = onnx_decomp.anneal_by_block(folder / "model.onnx", folder / "annealed.onnx", folder / "calib.npz",
                                         config=config, gate="flops",
                                         input_shapes={"tokens": [args.samples // 2, args.seq]})
    seconds = time.perf_counter() - start
    print(report.format())
    peak = peak_rss()
    block = max(b.weight_bytes for b in report.blocks)
    rows = args.samples * args.seq
    streams = 2 * rows * args.d * 4  # the original and the compressed stream, every sample
    taps = 3 * (rows // 2) * (2 * args.d + args.ffn) * 4  # largest block's taps: original, start, current
    groups = np.load(folder / "planted.npz")
    scores, inside = {}, 0
    for site, plan in report.plans.items():
        labels = [np.full(n, -1) for n in (plan.n_out, plan.n_in)]
        for number, branch in enumerate(getattr(plan, "branches", ())):
            labels[0][branch.rows], labels[1][branch.cols] = number, number
        planted_rows, planted_cols = groups[f"{site.weight}.rows"], groups[f"{site.weight}.cols"]
        scores[site.weight] = min(adjusted_rand_index(labels[0], planted_rows),
                                  adjusted_rand_index(labels[1], planted_cols))
        inside += all(len(set(planted_rows[b.rows]) | set(planted_cols[b.cols])) == 1
                      for b in getattr(plan, "branches", ()))
    found = sum(score == 1.0 for score in scores.values())
    bound = 3 * block + streams + taps
    layer = 4 * (4 * args.d ** 2 + 3 * args.d * args.ffn)  # one transformer layer: attention + FFN, float32
    layer_bound = 3 * layer + streams + taps
    print(f"\nannealed in {seconds:.0f} s; peak resident memory {peak / 2**20:.0f} MiB, {(peak - baseline) / 2**20:.0f} "
          f"MiB above the {baseline / 2**20:.0f} MiB after imports; largest block's weights {block / 2**20:.0f} MiB, "
          f"activations held {streams / 2**20:.0f} MiB (both streams) + {taps / 2**20:.0f} MiB (largest block's "
          f"taps): bound 3 x {block / 2**20:.0f} + {(streams + taps) / 2**20:.0f} = {bound / 2**20:.0f} MiB: "
          f"{'met' if peak - baseline <= bound else 'missed'} above the imports ({peak / bound:.2f}x the bound "
          f"counting them, {(peak - baseline) / bound:.2f}x not)")
    print(f"against one transformer layer (attention + FFN, {layer / 2**20:.0f} MiB of weights): bound "
          f"{layer_bound / 2**20:.0f} MiB, {(peak - baseline) / layer_bound:.2f}x it above the imports")
    print(f"planted partition found exactly (ARI 1.0 on rows and columns) in {found} of {len(groups.files) // 2} "
          f"weights ({len(scores)} cut; {inside} with every block inside one planted block); lowest ARI "
          f"{min(scores.values(), default=float('nan')):.3f}")
    (folder / "result.json").write_text(json.dumps({"seconds": seconds, "peak": peak, "baseline": baseline,
                                                    "block": block, "layer": layer, "streams": streams, "taps": taps,
                                                    "ari": scores, "inside": inside, "report": report.to_dict()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("d", 2048), ("layers", 22), ("ffn", 5632), ("heads", 32), ("vocab", 256), ("groups", 8),
                          ("samples", 32), ("seq", 64)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--tolerance", type=float, default=0.2)
    parser.add_argument("--folder", type=Path, default=ROOT / "build/llama")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args()
    if args.measure:
        return measure(args.folder, args)
    args.folder.mkdir(parents=True, exist_ok=True)
    if not (args.folder / "model.onnx").exists():
        rng = np.random.default_rng(0)
        groups = llama(args.folder, args, rng)
        np.savez(args.folder / "planted.npz", **{f"{name}.{axis}": value for name, (rows, cols) in groups.items()
                                                 for axis, value in (("rows", rows), ("cols", cols))})
        np.savez(args.folder / "calib.npz", tokens=rng.integers(0, args.vocab, (args.samples, args.seq)))
    params = sum(int(np.prod(t.dims)) for t in onnx.load(str(args.folder / "model.onnx"),
                                                         load_external_data=False).graph.initializer)
    print(f"Llama-shaped d {args.d}, {args.layers} layers, FFN {args.ffn}: {params / 1e9:.3f}B parameters "
          f"({params * 4 / 2**30:.2f} GiB float32) in {args.folder}", flush=True)
    subprocess.run([sys.executable, __file__, "--measure", *sys.argv[1:]], check=True)


if __name__ == "__main__":
    main()
