"""A planted CNN built in code: known channel structure (permuted channel blocks, dead channels) in a
MobileNet-like chain, for the tests and ``tools/bench_cnn.py``.

    x [N, C, S, S] -> Conv 3x3 (C -> H, pads 1) -> BatchNormalization -> Relu -> depthwise Conv 3x3 (H)
      -> Clip(0, 6) -> Conv 1x1 (H -> H) -> Mul by a [H, 1, 1] constant -> Relu -> Conv 3x3 (H -> C, pads 1)
      (-> Add x, with ``residual``) -> y

- ``blocks``: the 1 x 1 Conv is block-diagonal in ``blocks`` equal blocks under hidden permutations of its
  input and output channels (1: dense);
- ``dead``: that many output channels of the first Conv and of the 1 x 1 Conv are dead (bias -100 before a
  ReLU: zero on any input), so they reach the next Conv as constants.
Entries are N(0, 1 / fan_in) (kernels scaled so activations stay of order one); seeded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C, H, S = 8, 32, 12


def planted_cnn(blocks: int = 1, dead: int = 0, residual: bool = False, seed: int = 0) -> onnx.ModelProto:
    """The model of the module docstring (opset 17, IR 10)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    mix = np.zeros((H, H, 1, 1), np.float32)
    size = H // blocks
    for b in range(blocks):
        mix[b * size:(b + 1) * size, b * size:(b + 1) * size] = normal(size, size, 1, 1)
    mix = mix[rng.permutation(H)][:, rng.permutation(H)]
    b1, b2 = (0.1 * rng.standard_normal((2, H))).astype(np.float32)
    b1[rng.permutation(H)[:dead]] = b2[rng.permutation(H)[:dead]] = -100.0
    arrays = {"w1": normal(H, C, 3, 3), "b1": b1, "gamma": rng.uniform(0.5, 1.5, H), "beta": 0.1 * rng.standard_normal(H),
              "mean": 0.1 * rng.standard_normal(H), "var": rng.uniform(0.5, 1.5, H), "wd": normal(H, 1, 3, 3),
              "bd": 0.1 * rng.standard_normal(H), "low": 0.0, "high": 6.0, "w2": mix, "b2": b2,
              "scale": rng.uniform(0.5, 1.5, (H, 1, 1)), "w3": normal(C, H, 3, 3), "b3": 0.1 * rng.standard_normal(C)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], "bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], "relu1"),
             helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], "depthwise", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              group=H),
             helper.make_node("Clip", ["d1", "low", "high"], ["k1"], "clip"),
             helper.make_node("Conv", ["k1", "w2", "b2"], ["c2"], "conv2", kernel_shape=[1, 1]),
             helper.make_node("Mul", ["c2", "scale"], ["m2"], "scale2"),
             helper.make_node("Relu", ["m2"], ["r2"], "relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3" if residual else "y"], "conv3", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    if residual:
        nodes.append(helper.make_node("Add", ["c3", "x"], ["y"], "residual"))
    graph = helper.make_graph(nodes, "planted_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, S, S])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, S, S])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def calibration(samples: int = 64, seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs ``x`` for ``planted_cnn``."""
    return {"x": np.random.default_rng(seed).standard_normal((samples, C, S, S)).astype(np.float32)}
