"""The weighted operator: one view of a MatMul, Gemm or Conv with a constant weight, for the passes and the
search alike.

Rule: a node qualifies when it is ``MatMul(x, B)``, ``Gemm(A, B[, C])`` with ``transA=0`` and ``B`` 2-D, or
``Conv(X, W[, B])``, with the weight a constant float16/32/64 tensor, or such a constant behind a ``Cast`` to
a float type (fp16 weights computed in fp32), and a Gemm's ``C`` or a Conv's ``B`` (if any) a constant.
Other such nodes holding a constant operand, or whose weight is computed from constants by another op, are
returned as ``Skipped`` with the reason, and so is every one inside a model-local function; nodes with no
constant operand (activation products) are ignored. ``find_weighted_ops`` looks at MatMul/Gemm by default
(what the rewrite supports); Conv is seen when asked for.

Orientation, one vocabulary for the whole package: a weight is the linear map ``y = W x`` with
``W [n_out, n_in]``; ``Layout`` says how the stored tensor relates to ``W``. For a Conv, ``W`` is the kernel
unrolled over its window: ``[C_out, C_in / group * kh * kw]`` (output channel o reads input channels of its
group only); its features are channels, on axis 1 of the activations, where MatMul/Gemm have them last.

The effective weight is ``alpha * W`` (Gemm's alpha, 1 otherwise); ``stored_from`` turns an effective
weight back into what the model stores (layout, shape, element type). The output bias (``output_bias``) is
what adds one value per output feature: Gemm's ``beta * C`` or Conv's ``B``, or for a MatMul the constant of
the one ``Add`` that alone reads its output, each only when no other node reads that constant.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from .site import Site

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
LINEAR = ("MatMul", "Gemm")
CONV = ("Conv",)


class Layout(enum.Enum):
    """How a stored weight holds ``W [n_out, n_in]``."""

    OUT_IN = "out_in"  # the tensor is W itself: Gemm transB=1, nn.Linear.weight
    IN_OUT = "in_out"  # the tensor is W.T: MatMul B[K, N], Gemm transB=0
    KERNEL = "kernel"  # a Conv kernel [C_out, C_in / group, k...]: W is it unrolled over the window

    @classmethod
    def of(cls, node: gs.Node) -> "Layout":
        """The layout in which ``node`` reads its weight (input 1)."""
        if node.op == "Conv":
            return cls.KERNEL
        return cls.OUT_IN if node.op == "Gemm" and node.attrs.get("transB", 0) else cls.IN_OUT

    def flipped(self) -> "Layout":
        """The layout of a 2-D tensor's transpose."""
        return Layout.IN_OUT if self is Layout.OUT_IN else Layout.OUT_IN

    def to_matrix(self, stored: np.ndarray) -> np.ndarray:
        """``W [n_out, n_in]`` from a tensor stored in this layout (a view, no copy)."""
        if self is Layout.KERNEL:
            return stored.reshape(stored.shape[0], -1)
        return stored if self is Layout.OUT_IN else stored.T

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """The 2-D tensor to store for ``W [n_out, n_in]`` in this layout (a view, no copy; a kernel still
        needs its window shape back, ``WeightedOp.stored_from``)."""
        return matrix.T if self is Layout.IN_OUT else matrix


@dataclass(frozen=True)
class OutputBias:
    """A per-output bias of the module rule: the constant, the scale it is added with, the node adding it."""

    tensor: gs.Constant
    scale: float
    node: gs.Node


@dataclass
class WeightedOp:
    """A node computing ``y = W x (+ bias)`` with a constant ``W`` (module rule)."""

    node: gs.Node
    graph: gs.Graph
    weight: gs.Constant
    layout: Layout
    bias: Optional[gs.Constant] = None  # the node's own bias input: Gemm's C (unscaled), Conv's B
    cast: Optional[gs.Node] = None  # the Cast between ``weight`` and the node, if the weight is stored so

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_out, n_in)`` of the matrix view."""
        shape = tuple(self.weight.shape)
        if self.layout is Layout.KERNEL:
            return shape[0], int(np.prod(shape[1:]))
        return shape if self.layout is Layout.OUT_IN else shape[::-1]

    @property
    def feature_axis(self) -> int:
        """The axis of the activations that holds the features: channels for a Conv, else the last."""
        return 1 if self.layout is Layout.KERNEL else -1

    @property
    def groups(self) -> int:
        return int(self.node.attrs.get("group", 1)) if self.layout is Layout.KERNEL else 1

    @property
    def window(self) -> int:
        """Kernel positions per input channel (1 for MatMul/Gemm)."""
        return int(np.prod(self.weight.shape[2:])) if self.layout is Layout.KERNEL else 1

    @property
    def alpha(self) -> float:
        return float(self.node.attrs.get("alpha", 1.0)) if self.node.op == "Gemm" else 1.0

    @property
    def site(self) -> Site:
        return Site(self.graph.name, self.node.name, self.weight.name)

    def matrix(self) -> np.ndarray:
        """The stored weight as ``W[n_out, n_in]`` (``stored_values``: a fresh load of a lazy weight, else a
        view)."""
        return self.layout.to_matrix(stored_values(self.weight))

    def effective(self, dtype=np.float64) -> np.ndarray:
        """``alpha * W`` as ``dtype`` (a read-only view of the stored values where nothing needs converting)."""
        view = self.matrix()
        if self.alpha == 1 and view.dtype == dtype:
            return view
        return self.alpha * view.astype(dtype)

    def input_columns(self, features: np.ndarray) -> np.ndarray:
        """The columns of ``W`` that read input ``features`` (a Conv's channel reads ``window`` columns, in
        order; one group)."""
        features = np.asarray(features, dtype=np.int64)
        return (features[:, None] * self.window + np.arange(self.window)).ravel()

    def tensor_from(self, matrix: np.ndarray) -> np.ndarray:
        """The tensor to store for a matrix ``[rows, cols]`` of this op's layout, of any row and column count
        (a Conv kernel keeps its window)."""
        if self.layout is Layout.KERNEL:
            return matrix.reshape(matrix.shape[0], -1, *self.weight.shape[2:])
        return self.layout.from_matrix(matrix)

    def stored_from(self, matrix: np.ndarray) -> np.ndarray:
        """What the model stores for the effective weight ``matrix [n_out, n_in]``: divided by alpha, in the
        stored layout, shape and element type."""
        stored = self.layout.from_matrix(matrix if self.alpha == 1 else matrix / self.alpha).reshape(self.weight.shape)
        return np.ascontiguousarray(stored, dtype=self.weight.dtype)

    def output_bias(self) -> Optional[OutputBias]:
        """The per-output bias of the module rule, or None."""
        n_out = self.shape[0]
        if self.node.op in ("Gemm", "Conv"):
            beta = float(self.node.attrs.get("beta", 1.0)) if self.node.op == "Gemm" else 1.0
            ok = self.bias is not None and beta != 0 and _per_output(self.bias, n_out) and len(self.bias.outputs) == 1
            return OutputBias(self.bias, beta, self.node) if ok else None
        output = self.node.outputs[0]
        readers = output.outputs
        if len(readers) != 1 or readers[0].op != "Add" or output in self.graph.outputs:
            return None
        others = [t for t in readers[0].inputs if t is not output]
        if len(others) == 1 and isinstance(others[0], gs.Constant) and _per_output(others[0], n_out) \
                and len(others[0].outputs) == 1:
            return OutputBias(others[0], 1.0, readers[0])
        return None

    @property
    def node_name(self) -> str:
        return self.node.name

    @property
    def op_type(self) -> str:
        return self.node.op

    @property
    def graph_name(self) -> str:
        return self.graph.name


def _per_output(tensor: gs.Constant, n_out: int) -> bool:
    """A constant that adds one value per output feature (``[n]``, ``[1, n]``, ...)."""
    shape = tuple(tensor.shape)
    return len(shape) >= 1 and shape[-1] == n_out and int(np.prod(shape)) == n_out


def stored_values(tensor: gs.Constant) -> np.ndarray:
    """A constant's values, loaded for this caller alone while they are still lazy: onnx-graphsurgeon's
    ``values`` would keep a second copy of every weight beside the ModelProto's own."""
    lazy = tensor._values
    return lazy.load() if isinstance(lazy, LazyValues) else tensor.values


@dataclass
class Skipped:
    """A MatMul/Gemm/Conv with a constant operand that the rewrite leaves alone, and why."""

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


def _classify(node: gs.Node, graph: gs.Graph) -> "WeightedOp | Skipped | None":
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
    rank = len(weight.shape)
    if (rank != 2) if node.op != "Conv" else (rank < 3):
        wanted = "2-D" if node.op != "Conv" else "at least 3-D"
        return skip(f"{rank}-D constant weight (only {wanted} is supported)")
    if 0 in weight.shape:
        return skip(f"empty weight {list(weight.shape)}: nothing to rewrite")
    if not _is_float(weight.dtype):
        return skip(f"{dtype_name(weight.dtype)} weight (only float16/32/64; quantized left alone)")
    if node.op == "MatMul":
        return WeightedOp(node, graph, weight, Layout.of(node), cast=cast)
    if node.attrs.get("transA", 0):
        return skip("Gemm with transA=1")
    bias = inputs[2] if len(inputs) > 2 and not inputs[2].is_empty() else None
    if bias is not None and not isinstance(bias, gs.Constant):
        return skip(f"{node.op} bias {'C' if node.op == 'Gemm' else 'B'} is not a constant")
    return WeightedOp(node, graph, weight, Layout.of(node), bias=bias, cast=cast)


def find_weighted_ops(graph: gs.Graph, op_types: Sequence[str] = LINEAR) -> tuple[list[WeightedOp], list[Skipped]]:
    """Every qualifying node of ``op_types`` in ``graph`` and its subgraphs, and those skipped with a reason
    (module rule), model-local functions included."""
    found: list[WeightedOp] = []
    skipped: list[Skipped] = []
    for subgraph in all_graphs(graph):
        for node in subgraph.nodes:
            if node.op not in op_types:
                continue
            result = _classify(node, subgraph)
            if isinstance(result, WeightedOp):
                found.append(result)
            elif isinstance(result, Skipped):
                skipped.append(result)
    for function in graph.functions:
        skipped += [Skipped(node.name, node.op, f"function {function.name}",
                            f"inside model-local function {function.name!r} (inline it to rewrite)")
                    for node in function.nodes if node.op in op_types]
    return found, skipped


def one_node_graph(op: WeightedOp, x_shape: Sequence[int], dtype, root: gs.Graph,
                   values: Callable[[gs.Constant], object] = stored_values) -> gs.Graph:
    """``op``'s node alone, reading a graph input ``x`` of ``x_shape`` and writing ``y``, with copies of
    its weight and bias (``values``: what a copy holds), in a graph named like ``op``'s (so its site is the
    same); opset and IR version of ``root``, the graph ``op`` belongs to at the top."""
    x, y = gs.Variable("x", dtype, list(x_shape)), gs.Variable("y", dtype)
    weights = [gs.Constant(t.name, values(t)) for t in (op.weight, op.bias) if t is not None]
    node = gs.Node(op.node.op, op.node.name, dict(op.node.attrs), [x, *weights], [y])
    return gs.Graph([node], [x], [y], name=op.graph.name, opset=root.opset, ir_version=root.ir_version,
                    import_domains=root.import_domains)
