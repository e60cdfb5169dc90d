"""Find the MatMul/Gemm nodes whose weight is a constant 2-D float matrix, in the graph and its subgraphs.

Rule: a node qualifies when it is ``MatMul(x, B)`` or ``Gemm(A, B[, C])`` with ``transA=0``, ``B`` a constant
2-D float16/32/64 tensor, or such a constant behind a ``Cast`` to a float type (fp16 weights computed in
fp32), and ``C`` (if any) a constant. Other MatMul/Gemm nodes that hold a constant operand, or whose weight
is computed from constants by another op, are returned as ``Skipped`` with the reason, and so is every
MatMul/Gemm inside a model-local function; nodes with no constant operand (activation products) are ignored.

Orientation, one vocabulary for the whole package: a weight is the linear map ``y = W x`` with
``W [n_out, n_in]``; ``Layout`` says how the stored tensor relates to ``W``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class Layout(enum.Enum):
    """How a stored 2-D weight holds ``W [n_out, n_in]``."""

    OUT_IN = "out_in"  # the tensor is W itself: Gemm transB=1, nn.Linear.weight
    IN_OUT = "in_out"  # the tensor is W.T: MatMul B[K, N], Gemm transB=0

    @classmethod
    def of(cls, node: gs.Node) -> "Layout":
        """The layout in which ``node`` reads its weight (input 1)."""
        return cls.OUT_IN if node.op == "Gemm" and node.attrs.get("transB", 0) else cls.IN_OUT

    def flipped(self) -> "Layout":
        return Layout.IN_OUT if self is Layout.OUT_IN else Layout.OUT_IN

    def to_matrix(self, stored: np.ndarray) -> np.ndarray:
        """``W [n_out, n_in]`` from a tensor stored in this layout (a view, no copy)."""
        return stored if self is Layout.OUT_IN else stored.T

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """The tensor to store for ``W [n_out, n_in]`` in this layout (a view, no copy)."""
        return matrix if self is Layout.OUT_IN else matrix.T


@dataclass
class LinearOp:
    """A node computing ``y = x @ W.T (+ bias)`` with a constant ``W`` of shape ``[n_out, n_in]``."""

    node: gs.Node
    graph: gs.Graph
    weight: gs.Constant
    layout: Layout
    bias: Optional[gs.Constant] = None  # Gemm's C, unscaled
    cast: Optional[gs.Node] = None  # the Cast between ``weight`` and the node, if the weight is stored so

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_out, n_in)``."""
        rows, cols = self.weight.shape
        return (rows, cols) if self.layout is Layout.OUT_IN else (cols, rows)

    def matrix(self) -> np.ndarray:
        """The weight as ``W[n_out, n_in]`` (``stored_values``: a fresh load of a lazy weight, else a view)."""
        return self.layout.to_matrix(stored_values(self.weight))

    @property
    def node_name(self) -> str:
        return self.node.name

    @property
    def op_type(self) -> str:
        return self.node.op

    @property
    def graph_name(self) -> str:
        return self.graph.name


def stored_values(tensor: gs.Constant) -> np.ndarray:
    """A constant's values, loaded for this caller alone while they are still lazy: onnx-graphsurgeon's
    ``values`` would keep a second copy of every weight beside the ModelProto's own."""
    lazy = tensor._values
    return lazy.load() if isinstance(lazy, LazyValues) else tensor.values


@dataclass
class Skipped:
    """A MatMul/Gemm with a constant operand that the rewrite leaves alone, and why."""

    node_name: str
    op_type: str
    graph_name: str
    reason: str


def all_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph itself, then every subgraph (If/Loop/Scan bodies) at any depth."""
    yield graph
    yield from graph.subgraphs(recursive=True)


def dtype_name(dtype) -> str:
    """A tensor dtype's name; onnx-graphsurgeon keeps types numpy lacks (bfloat16, ...) as ONNX enums."""
    if isinstance(dtype, int):
        return onnx.TensorProto.DataType.Name(dtype).lower()
    return np.dtype(dtype).name


def _is_float(dtype) -> bool:
    return dtype_name(dtype) in {np.dtype(t).name for t in FLOAT_DTYPES}


def _constant_source(tensor) -> "tuple[Optional[gs.Constant], Optional[gs.Node]]":
    """The constant behind ``tensor``: itself, or the input of the Cast that produces it (with the Cast)."""
    if isinstance(tensor, gs.Constant):
        return tensor, None
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if producer is not None and producer.op == "Cast" and isinstance(producer.inputs[0], gs.Constant) \
            and _is_float(onnx.helper.tensor_dtype_to_np_dtype(producer.attrs["to"])):
        return producer.inputs[0], producer
    return None, None


def _computed_from_constants(tensor) -> Optional[str]:
    """The op computing ``tensor`` from constants only (DequantizeLinear, Reshape, ...), if any."""
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if producer is not None and producer.inputs and all(isinstance(t, gs.Constant) or t.is_empty()
                                                        for t in producer.inputs):
        return producer.op
    return None


def _classify(node: gs.Node, graph: gs.Graph) -> "LinearOp | Skipped | None":
    def skip(reason: str) -> Skipped:
        return Skipped(node.name, node.op, graph.name, reason)

    inputs = node.inputs
    if len(inputs) < 2:
        return None
    first_const = isinstance(inputs[0], gs.Constant)
    weight, cast = _constant_source(inputs[1])
    if weight is None:
        if first_const:
            return skip("constant is the first operand, not the weight")
        computed = _computed_from_constants(inputs[1])
        return skip(f"weight computed by {computed} from constants (not rewritten)") if computed else None
    if len(weight.shape) != 2:
        return skip(f"{len(weight.shape)}-D constant weight (only 2-D is supported)")
    if 0 in weight.shape:
        return skip(f"empty weight {list(weight.shape)}: nothing to rewrite")
    if not _is_float(weight.dtype):
        return skip(f"{dtype_name(weight.dtype)} weight (only float16/32/64; quantized left alone)")
    if node.op == "MatMul":
        return LinearOp(node, graph, weight, Layout.of(node), cast=cast)
    if node.attrs.get("transA", 0):
        return skip("Gemm with transA=1")
    bias = inputs[2] if len(inputs) > 2 and not inputs[2].is_empty() else None
    if bias is not None and not isinstance(bias, gs.Constant):
        return skip("Gemm bias C is not a constant")
    return LinearOp(node, graph, weight, Layout.of(node), bias=bias, cast=cast)


def find_linear_ops(graph: gs.Graph) -> tuple[list[LinearOp], list[Skipped]]:
    """Every qualifying MatMul/Gemm in ``graph`` and its subgraphs, and those skipped with a reason
    (module rule), model-local functions included."""
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
    for function in graph.functions:
        skipped += [Skipped(node.name, node.op, f"function {function.name}",
                            f"inside model-local function {function.name!r} (inline it to rewrite)")
                    for node in function.nodes if node.op in ("MatMul", "Gemm")]
    return found, skipped


ELEMENTWISE = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Tanh", "Sigmoid", "HardSigmoid",
               "Softplus", "Softsign", "Erf", "Identity", "Dropout", "Cast"}
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


def one_node_graph(op: LinearOp, x_shape: Sequence[int], dtype, root: gs.Graph) -> gs.Graph:
    """``op``'s node alone, reading a graph input ``x`` of ``x_shape`` and writing ``y``, with copies of
    its weight and bias; opset and IR version of ``root``, the graph ``op`` belongs to at the top."""
    x, y = gs.Variable("x", dtype, list(x_shape)), gs.Variable("y", dtype)
    weights = [gs.Constant(t.name, stored_values(t)) for t in (op.weight, op.bias) if t is not None]
    node = gs.Node(op.node.op, op.node.name, dict(op.node.attrs), [x, *weights], [y])
    return gs.Graph([node], [x], [y], opset=root.opset, ir_version=root.ir_version,
                    import_domains=root.import_domains)
