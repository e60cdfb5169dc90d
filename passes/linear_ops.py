"""Find the MatMul/Gemm nodes whose weight is a constant 2-D float matrix, in the graph and its subgraphs.

Rule: a node qualifies when it is ``MatMul(x, B)`` or ``Gemm(A, B[, C])`` with ``transA=0``, ``B`` a constant
2-D float tensor, and ``C`` (if any) a constant. Other MatMul/Gemm nodes that hold a constant operand are
returned as ``Skipped`` with the reason; nodes with no constant operand (activation products) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import onnx_graphsurgeon as gs

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class LinearOp:
    """A node computing ``y = x @ W.T (+ bias)`` with a constant ``W`` of shape ``[n_out, n_in]``."""

    node: gs.Node
    graph: gs.Graph
    weight: gs.Constant
    transposed: bool  # True when ``weight`` holds W itself ([n_out, n_in]); False when it holds W.T
    bias: Optional[gs.Constant] = None  # Gemm's C, unscaled

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_out, n_in)``."""
        rows, cols = self.weight.shape
        return (rows, cols) if self.transposed else (cols, rows)

    def matrix(self) -> np.ndarray:
        """The weight as ``W[n_out, n_in]`` (a view, no copy)."""
        values = self.weight.values
        return values if self.transposed else values.T


@dataclass
class Skipped:
    node_name: str
    op_type: str
    graph_name: str
    reason: str


def all_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph itself, then every subgraph (If/Loop/Scan bodies) at any depth."""
    yield graph
    yield from graph.subgraphs(recursive=True)


def _is_float(tensor: gs.Constant) -> bool:
    return any(np.dtype(tensor.dtype) == np.dtype(t) for t in FLOAT_DTYPES)


def _classify(node: gs.Node, graph: gs.Graph) -> "LinearOp | Skipped | None":
    def skip(reason: str) -> Skipped:
        return Skipped(node.name, node.op, graph.name, reason)

    inputs = node.inputs
    if len(inputs) < 2:
        return None
    first_const, weight = isinstance(inputs[0], gs.Constant), inputs[1]
    if not isinstance(weight, gs.Constant):
        return skip("constant is the first operand, not the weight") if first_const else None
    if len(weight.shape) != 2:
        return skip(f"{len(weight.shape)}-D constant weight (only 2-D is supported)")
    if not _is_float(weight):
        return skip(f"{np.dtype(weight.dtype).name} weight (only float16/32/64; quantized left alone)")
    if node.op == "MatMul":
        return LinearOp(node, graph, weight, transposed=False)
    if node.attrs.get("transA", 0):
        return skip("Gemm with transA=1")
    bias = inputs[2] if len(inputs) > 2 and not inputs[2].is_empty() else None
    if bias is not None and not isinstance(bias, gs.Constant):
        return skip("Gemm bias C is not a constant")
    return LinearOp(node, graph, weight, transposed=bool(node.attrs.get("transB", 0)), bias=bias)


def find_linear_ops(graph: gs.Graph) -> tuple[list[LinearOp], list[Skipped]]:
    """Every qualifying MatMul/Gemm in ``graph`` and its subgraphs, and those skipped with a reason."""
    found: list[LinearOp] = []
    skipped: list[Skipped] = []
    for subgraph in all_graphs(graph):
        for node in subgraph.nodes:
            if node.op not in ("MatMul", "Gemm"):
                continue
            result = _classify(node, subgraph)
            if isinstance(result, LinearOp):
                found.append(result)
            elif isinstance(result, Skipped):
                skipped.append(result)
    return found, skipped


ELEMENTWISE = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Tanh", "Sigmoid", "HardSigmoid",
               "Softplus", "Softsign", "Erf", "Identity", "Dropout"}
BROADCAST_CONSTANT = {"Add", "Sub", "Mul", "Div"}


def _per_feature(node: gs.Node) -> bool:
    """True for a node that maps each feature on its own: a unary activation, or arithmetic with a constant."""
    if node.op in ELEMENTWISE:
        return True
    return node.op in BROADCAST_CONSTANT and sum(isinstance(t, gs.Constant) for t in node.inputs) == 1


def find_chains(ops: list[LinearOp]) -> list[tuple[LinearOp, LinearOp]]:
    """Pairs ``(first, second)`` where ``first``'s output reaches ``second``'s input only through
    per-feature nodes, each with a single consumer, and the hidden sizes agree."""
    by_node = {id(op.node): op for op in ops}
    chains = []
    for op in ops:
        tensor = op.node.outputs[0]
        while len(tensor.outputs) == 1:
            consumer = tensor.outputs[0]
            second = by_node.get(id(consumer))
            if second is not None:
                if consumer.inputs[0] is tensor and second.shape[1] == op.shape[0]:
                    chains.append((op, second))
                break
            if not _per_feature(consumer) or len(consumer.outputs) != 1:
                break
            tensor = consumer.outputs[0]
    return chains
