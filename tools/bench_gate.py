"""How to measure a candidate's fidelity fastest: the ways the issue names, side by side on one model.

    python tools/bench_gate.py [--width 1024] [--layers 4] [--samples 256] [--reps 7]
    python tools/bench_gate.py --model models/digits_mlp/model.onnx --samples 225

One step of annealing changes one layer's weights and measures the model's outputs on the tuning samples.
Per step (median of ``--reps`` interleaved rounds, seconds; the ratio column is against weights-as-inputs):
- rebuild: the model with the new initializer serialized and loaded into a new InferenceSession, then run;
- add_initializer: a new session over the model serialized once, the changed weight an OrtValue that
  overrides its initializer (``SessionOptions.add_initializer``: no serialization per step), then run;
- weights as inputs: one session made once, whose weights are graph inputs; the step only runs it
  (what ``onnx_decomp.search.network`` does);
- numpy estimate: the changed layer's own output error on cached activations (no ONNX Runtime at all):
  what a cheap ranking would cost; it cannot accept a step (the model's output is not measured);
- floor: a run of the original model's own session (weights as initializers, no change possible): what
  weights as inputs cost over a plain run.
Without ``--model``: an MLP of ``--layers`` Gemm(transB=1) + Relu of ``--width``, random weights.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_decomp.context import ModelContext
from onnx_decomp.search.network import Network


def mlp(width: int, layers: int, rng) -> onnx.ModelProto:
    nodes, weights, name = [], [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("Gemm", [name, f"W{i}", f"b{i}"], [f"h{i}"], transB=1, name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        weights += [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                                            f"W{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        name = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    model = onnx.load(args.model) if args.model else mlp(args.width, args.layers, rng)
    network = Network(ModelContext.load(model))
    layer = network.layers[len(network.layers) // 2]
    feeds = {spec.name: rng.standard_normal((args.samples, *spec.shape[1:])).astype(spec.dtype)
             for spec in ModelContext.load(model).specs}
    cut = layer.stored_weight * (rng.random(layer.stored_weight.shape) < 0.5)
    options = ort.SessionOptions()
    providers = ["CPUExecutionProvider"]
    taps = network.run([feeds], taps=True).taps[layer.site]

    def rebuild():
        changed = network.model_with({layer.site: (cut, layer.stored_bias)})
        ort.InferenceSession(changed.SerializeToString(), options, providers=providers).run(None, feeds)

    original = network.model_with({}).SerializeToString()  # once: what add_initializer overrides

    def add_initializer():
        own = ort.SessionOptions()
        value = ort.OrtValue.ortvalue_from_numpy(cut)
        own.add_initializer(layer.weight, value)
        ort.InferenceSession(original, own, providers=providers).run(None, feeds)

    def weights_as_inputs():
        network.run([feeds], {layer.site: (cut, layer.stored_bias)})

    dense = layer.op.layout.to_matrix(layer.stored_weight)
    scale = np.linalg.norm(taps @ dense.T)

    def numpy_estimate():
        np.linalg.norm(taps @ (layer.op.layout.to_matrix(cut) - dense).T) / scale

    plain = ort.InferenceSession(original, options, providers=providers)

    def floor():
        plain.run(None, feeds)

    ways = {"rebuild": rebuild, "add_initializer": add_initializer, "weights as inputs": weights_as_inputs,
            "numpy estimate": numpy_estimate, "floor": floor}
    times = {name: [] for name in ways}
    for name, way in ways.items():
        way()  # warm-up
    for _ in range(args.reps):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - start)
    base = np.median(times["weights as inputs"])
    size = sum(t.ByteSize() for t in onnx.load_from_string(original).graph.initializer) / 2 ** 20
    print(f"{args.model or f'MLP {args.layers} x {args.width}x{args.width}'}: {size:.1f} MiB of weights, "
          f"{args.samples} samples, median of {args.reps} interleaved rounds")
    print(f"{'way':<20}{'s per step':>12}{'vs weights as inputs':>24}")
    for name in ways:
        median = float(np.median(times[name]))
        print(f"{name:<20}{median:>12.4f}{median / base:>23.2f}x")


if __name__ == "__main__":
    main()
