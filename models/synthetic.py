"""Synthetic block-structured models for scale: big enough to test memory, built without holding them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def block_chain(folder: Path, layers: int, width: int, blocks: int, seed: int = 0) -> tuple[Path, int]:
    """``folder/model.onnx``: ``layers`` x (MatMul -> Relu) over ``x [N, width]``, each float32 weight
    block-diagonal with ``blocks`` blocks under hidden row and column permutations (entries N(0, 1/size)),
    all weights in ``model.onnx.data``, written one at a time. Returns the model path and its weight bytes."""
    rng = np.random.default_rng(seed)
    size = width // blocks
    nodes, initializers = [], []
    data = folder / "model.onnx.data"
    with open(data, "wb") as handle:
        for layer in range(layers):
            w = np.zeros((width, width), np.float32)
            for b in range(blocks):
                w[b * size:(b + 1) * size, b * size:(b + 1) * size] = rng.standard_normal((size, size)) / np.sqrt(size)
            w = w[rng.permutation(width)][:, rng.permutation(width)]
            tensor = TensorProto(name=f"W{layer}", data_type=TensorProto.FLOAT, dims=[width, width],
                                 data_location=TensorProto.EXTERNAL)
            for key, text in (("location", data.name), ("offset", str(handle.tell())), ("length", str(w.nbytes))):
                tensor.external_data.add(key=key, value=text)
            handle.write(np.ascontiguousarray(w.T).tobytes())  # MatMul holds W.T
            initializers.append(tensor)
            source = "x" if layer == 0 else f"r{layer - 1}"
            nodes += [helper.make_node("MatMul", [source, f"W{layer}"], [f"h{layer}"], name=f"mm{layer}"),
                      helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"])]
    graph = helper.make_graph(nodes, "block_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(f"r{layers - 1}", TensorProto.FLOAT, ["N", width])],
                              initializers)
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
                     .SerializeToString())
    return path, layers * width * width * 4


def independent_chain(width: int, groups: int, layers: int, noise: float = 0.0, seed: int = 0) -> onnx.ModelProto:
    """``layers`` x (MatMul -> Relu) over ``x [N, width]`` whose ``groups`` sub-networks are independent end to
    end: feature space ``l`` is permuted by a hidden ``order[l]``, and weight ``l`` maps block ``b`` of space
    ``l`` (entries N(0, 1/size)) to block ``b`` of space ``l + 1``. Outside the blocks, ``noise`` times a PyTorch
    Linear's initialization (uniform within 1/sqrt(width)): 0 leaves exact zeros."""
    rng = np.random.default_rng(seed)
    size = width // groups
    order = [rng.permutation(width) for _ in range(layers + 1)]
    nodes, weights = [], []
    for layer in range(layers):
        w = noise * rng.uniform(-1, 1, (width, width)) / np.sqrt(width)
        for b in range(groups):
            rows, cols = order[layer + 1][b * size:(b + 1) * size], order[layer][b * size:(b + 1) * size]
            w[np.ix_(rows, cols)] = rng.standard_normal((size, size)) / np.sqrt(size)
        weights.append(numpy_helper.from_array(np.ascontiguousarray(w.T, np.float32), f"W{layer}"))
        source = "x" if layer == 0 else f"r{layer - 1}"
        nodes += [helper.make_node("MatMul", [source, f"W{layer}"], [f"h{layer}"], name=f"mm{layer}"),
                  helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"], name=f"relu{layer}")]
    graph = helper.make_graph(nodes, "independent_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(f"r{layers - 1}", TensorProto.FLOAT, ["N", width])],
                              weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
