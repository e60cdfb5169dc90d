"""Shared builders: small real ONNX models made in code, and an ONNX Runtime runner."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_decomp import GateConfig
from onnx_decomp_passes import Site, find_weighted_ops

IR_VERSION = 10  # what onnxruntime >= 1.20 loads; onnx's own default may be newer
ANY_BLOCKS = GateConfig("flops", min_flop_reduction=1.0, forms=("branches",))  # whatever splits, untimed
FLOPS_BRANCHES = GateConfig("flops", forms=("branches",))  # the FLOP gate, one sub-operator per block


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def value(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def tensor(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def hidden_blocks(rng, block_shapes, empty_rows=0, empty_cols=0, dtype=np.float32):
    """W [n_out, n_in]: random dense blocks on the diagonal, then empty rows/cols, rows and columns
    shuffled. Returns W and the true number of blocks."""
    n_out = sum(r for r, _ in block_shapes) + empty_rows
    n_in = sum(c for _, c in block_shapes) + empty_cols
    w = np.zeros((n_out, n_in), dtype)
    r0 = c0 = 0
    for rows, cols in block_shapes:
        w[r0:r0 + rows, c0:c0 + cols] = rng.uniform(0.1, 1.0, (rows, cols)) * rng.choice([-1, 1], (rows, cols))
        r0, c0 = r0 + rows, c0 + cols
    return w[rng.permutation(n_out)][:, rng.permutation(n_in)], len(block_shapes)


def node_sites(graph) -> dict[str, Site]:
    """Node name -> the site of its weight, for every MatMul/Gemm with a constant weight in ``graph``."""
    return {op.node.name: op.site for op in find_weighted_ops(graph)[0]}


def by_weight(plans: dict) -> dict:
    """Plans keyed by ``Site`` re-keyed by the weight's name (each weight read by one node here)."""
    return {site.weight: plan for site, plan in plans.items()}


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
