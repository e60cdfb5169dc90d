"""The cost model: how long ONNX Runtime takes to run a small graph, from its shapes alone.

Rule, per node (times in microseconds, summed over the graph):
- every node costs ``node_us`` (dispatch; a Reshape, Shape or Squeeze costs nothing more: it aliases);
- MatMul / Gemm / Einsum / Conv: ``max(2 * MACs / gemm_gflops, weight bytes / weight_gbps)``, plus the
  second operand's bytes over ``pack_gbps`` when it is packed at every run: not for a 2-D constant weight
  (ONNX Runtime packs it once at load) nor a single-row product (GEMV), but for 3-D weights, activations on
  the right (the transposed form), Einsum, and a Conv's kernel; an Einsum adds ``einsum_us`` and two copies of its operand and result (it plans and
  transposes inside at every run);
- Gather: ``gather_ns`` per copy call (one per index and position before the axis: a last-axis Gather
  makes one per element, a row Gather one per row) plus its bytes as a copy; GatherElements:
  ``gather_elements_ns`` per element;
- anything else (Transpose, Concat, Slice, Split, Add, Relu, Expand, ...): bytes read and written over
  ``copy_gbps`` (a Slice or Split reads only what it writes).
``MEASURED`` holds the constants ``python tools/calibrate_cost.py`` measured on this project's 2-core machine
(ONNX Runtime 1.32 CPU, one intra-op thread, its CPU time; the median of three runs per constant);
the model ranks forms, the timing gate and ``--tune`` measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_decomp.cost.isolate import one_node_models
from onnx_decomp.cost.model_stats import COUNTED, node_macs
from onnx_decomp.decisions import Candidate
from onnx_decomp.io.walk import iter_graphs
from onnx_decomp.io.shapes import InputSpec, concrete_shapes
from onnx_decomp_passes import Form

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

ALIASES = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Dropout"}


@dataclass(frozen=True)
class CostModel:
    node_us: float
    copy_gbps: float
    weight_gbps: float
    gemm_gflops: float
    pack_gbps: float
    einsum_us: float
    gather_ns: float
    gather_elements_ns: float

    def graph_us(self, model: onnx.ModelProto, specs: Sequence[InputSpec]) -> float:
        """Estimated run time of ``model`` at the input shapes ``specs`` (module rule)."""
        shapes = concrete_shapes(model, specs, data_prop=True)
        constants = {t.name for graph in iter_graphs(model.graph) for t in graph.initializer}
        total = 0.0
        for graph in iter_graphs(model.graph):
            for node in graph.node:
                total += self.node_us + self._work_us(node, shapes, constants)
        return total

    def _work_us(self, node: onnx.NodeProto, shapes: Mapping[str, list], constants: set) -> float:
        """The node's time beyond dispatch; tensors counted as 4-byte elements."""
        def size(name: str) -> int:
            shape = shapes.get(name)
            return int(np.prod(shape)) if shape is not None and None not in shape else 0

        op = node.op_type
        if op in ALIASES:
            return 0.0
        moved = sum(size(n) for n in [*node.input, *node.output] if n and n not in constants)
        if op in ("Slice", "Split"):  # reads only what it writes
            moved = 2 * sum(size(n) for n in node.output)
        if op in COUNTED:
            weight = next((n for n in node.input[:2] if n in constants), None)
            weight_bytes = 4 * size(weight) if weight is not None else 0
            compute = max(2e-3 * node_macs(node, shapes) / self.gemm_gflops, 1e-3 * weight_bytes / self.weight_gbps)
            compute += 1e-3 * 4 * self._packed_elements(node, shapes, constants) / self.pack_gbps
            if op == "Einsum":  # it transposes its operand and its result inside, like two Transpose nodes
                return compute + self.einsum_us + 2e-3 * 4 * moved / self.copy_gbps
            return compute
        if op == "Gather":  # one copy call per index and outer position, then the bytes
            data = shapes.get(node.input[0]) or [0]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(data)
            calls = size(node.input[1]) * int(np.prod(data[:axis]))
            return 1e-3 * self.gather_ns * calls + 2e-3 * 4 * size(node.output[0]) / self.copy_gbps
        if op == "GatherElements":
            return 1e-3 * self.gather_elements_ns * size(node.output[0])
        return 1e-3 * 4 * moved / self.copy_gbps


    @staticmethod
    def _packed_elements(node: onnx.NodeProto, shapes: Mapping[str, list], constants: set) -> int:
        """Elements of the second GEMM operand packed at every run: none for a 2-D constant MatMul/Gemm weight
        (packed once at load) or a single-row product (a GEMV reads it as it is); a Conv packs its kernel."""
        a, b = shapes.get(node.input[0]) or [1], shapes.get(node.input[1]) or []
        if node.op_type == "Conv":
            return int(np.prod(b)) if b else 0
        lead = a[:-2] if node.op_type == "Einsum" else a[-2:-1]
        single_row = None not in lead and int(np.prod(lead)) <= 1  # unknown rows (inference stopped) may be many
        prepacked = node.op_type in ("MatMul", "Gemm") and node.input[1] in constants and len(b) == 2
        return 0 if prepacked or single_row or not b or None in b else int(np.prod(b))


MEASURED = CostModel(node_us=0.70, copy_gbps=49.2, weight_gbps=14.2, gemm_gflops=94.0, pack_gbps=34.1,
                     einsum_us=6.6, gather_ns=8.24, gather_elements_ns=0.73)


def estimate_speedup(candidate: Candidate, form: Form, x_shape: Sequence[int], root: "gs.Graph",
                     linked: tuple[bool, bool] = (False, False), model: CostModel = MEASURED) -> float:
    """Estimated dense/rewritten time ratio of the candidate's node alone in ``form`` at ``x_shape``; a
    ``linked`` side (input, output) of a chained form does without its layout change (``Form.chain_saves``)."""
    dense, rewritten = one_node_models(candidate, form, x_shape, root, shapes_only=True)
    dtype = helper.tensor_dtype_to_np_dtype(dense.graph.input[0].type.tensor_type.elem_type)
    spec = [InputSpec("x", np.dtype(dtype), tuple(x_shape))]
    rewritten_us = model.graph_us(rewritten, spec)
    saved = form.chain_saves
    if saved is not None:
        n_out, n_in = candidate.op.shape
        rows = int(np.prod(x_shape[:-1]))
        for side, width in zip(linked, (n_in, n_out)):
            if side:
                rewritten_us -= saved[0] * model.node_us + saved[1] * 2e-3 * 4 * rows * width / model.copy_gbps
    return model.graph_us(dense, spec) / max(rewritten_us, model.node_us)
