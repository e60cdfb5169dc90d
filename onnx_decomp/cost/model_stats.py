"""Size and work of a model: node count, parameter count, MatMul/Gemm FLOPs per inference.

FLOPs count ``2 * M * K * N`` for every MatMul/Gemm, and the same ``2 * MACs`` for the Einsum and Conv nodes
the block forms emit (any Einsum ``...k,...->`` contracting its first input's last axis; a Conv's output size
times its kernel's per-group size), at the shapes of the inputs used (``counted_shapes``): ONNX shape
inference with data propagation first; where it leaves a counted node's tensors unresolved (a batch or
sequence dim lost in a Shape -> Slice -> Reshape chain), the shapes ONNX Runtime really produces when it runs
the model once on those inputs with the tensors exposed as outputs. Nodes inside If branches are all
counted (an upper bound for models with control flow) where inference resolves them, else 0: ONNX Runtime
cannot expose a branch's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_decomp.config import SessionConfig
from onnx_decomp.io.shapes import InputSpec, concrete_shapes
from onnx_decomp.io.walk import iter_graphs, iter_tensors
from onnx_decomp.runtime.sessions import make_session, random_inputs, run_session


@dataclass
class ModelStats:
    nodes: int
    params: int
    matmul_flops: int


COUNTED = ("MatMul", "Gemm", "Einsum", "Conv")


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, list]) -> int:
    """Multiply-accumulates of one MatMul, Gemm, Einsum or Conv node at ``shapes`` (0 when unresolved)."""
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not _resolved(a) or not _resolved(out):
        return 0
    if node.op_type == "Conv":
        kernel = shapes.get(node.input[1])
        return int(np.prod(out)) * int(np.prod(kernel[1:])) if kernel else 0
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
    return int(np.prod(out)) * k


def _resolved(shape: Optional[list]) -> bool:
    """A shape with every dim known; none of the counted ops takes or gives a scalar, so [] is unresolved."""
    return bool(shape) and None not in shape


def _counted_tensors(node: onnx.NodeProto) -> list[str]:
    return [node.input[0], node.output[0], *(node.input[1:2] if node.op_type == "Conv" else [])]


def _run_shapes(model: onnx.ModelProto, names: Sequence[str], feeds: Mapping[str, np.ndarray],
                base_dir: Optional[Path]) -> dict[str, list]:
    """The shapes of ``names`` when ONNX Runtime runs ``model`` on ``feeds`` with them exposed as outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {value.name for value in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names if name not in outputs)
    session = make_session(probe, SessionConfig("cpu"), base_dir)
    values = run_session(session, dict(feeds), list(names), "the inputs used to count FLOPs")
    return {name: list(value.shape) for name, value in zip(names, values)}


def counted_shapes(model: onnx.ModelProto, specs: Sequence[InputSpec],
                   feeds: Optional[Mapping[str, np.ndarray]] = None, base_dir: Optional[Path] = None,
                   every_tensor: bool = False) -> dict[str, list]:
    """Every tensor's shape at ``specs`` for counting (module rule); ONNX Runtime runs on ``feeds`` (random
    inputs at ``specs`` when None) only where shape inference leaves a counted node unresolved, or with
    ``every_tensor`` any node output of the main graph."""
    shapes = concrete_shapes(model, specs, data_prop=True)
    given = {value.name for value in model.graph.input} | {t.name for t in model.graph.initializer}
    wanted = (name for node in model.graph.node
              for name in (node.output if every_tensor else _counted_tensors(node) if node.op_type in COUNTED else ()))
    missing = list(dict.fromkeys(name for name in wanted if name and not _resolved(shapes.get(name))
                                 and name not in given))
    if missing:
        feeds = feeds if feeds is not None else random_inputs(specs, np.random.default_rng(0))
        shapes.update(_run_shapes(model, missing, feeds, base_dir))
    return shapes


def model_stats(model: onnx.ModelProto, shapes: dict[str, list]) -> ModelStats:
    """Nodes and parameters of every (sub)graph; FLOPs of the MatMul/Gemm nodes at ``shapes``."""
    graphs = list(iter_graphs(model.graph))
    flops = sum(2 * node_macs(n, shapes) for g in graphs for n in g.node if n.op_type in COUNTED)
    nodes = sum(len(g.node) for g in graphs)
    params = sum(int(np.prod(t.dims)) for t in iter_tensors(model.graph))
    return ModelStats(nodes, params, flops)


def stats_at(model: onnx.ModelProto, specs: Sequence[InputSpec], feeds: Optional[Mapping[str, np.ndarray]] = None,
             base_dir: Optional[Path] = None) -> ModelStats:
    """``model_stats`` at the shapes ``specs`` give (``counted_shapes``)."""
    return model_stats(model, counted_shapes(model, specs, feeds, base_dir))
