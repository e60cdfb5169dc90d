"""Emission of the nodes that replace one MatMul/Gemm: naming, constants, and the index vocabulary
(select a set of features, slice a range, permute) every rewrite form is written in.

Rules: every new node and tensor is named ``<node>/<suffix>``, made unique in the model (``NameTable``:
never the name of an existing tensor or node, in any graph); a feature permutation is
``Transpose -> Gather(axis=0) -> Transpose`` when the rank is known (ONNX Runtime gathers whole rows far
faster than strided last-axis elements, design.md section 6), a last-axis ``Gather`` otherwise; a contiguous
range is a ``Slice``; branch weights are shared between nodes that use the same weight with the same plan;
a weight stored behind a ``Cast`` keeps its stored type, each branch weight gets its own ``Cast``.
``gather_features`` is the other way to pick features: ``GatherElements`` with its indices broadcast to the
input's leading dims (``Expand``), several times cheaper than either Gather at batch 1 and 64 (README, "The
rewrite and what it costs"); it may repeat or drop features.
Every node emitted records the site it replaces, and the block it serves when it serves one
(``Builder.for_block``), as ``metadata_props`` of the written model (``site.METADATA_*``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import onnx_graphsurgeon as gs

from .ops import WeightedOp, all_graphs
from .site import METADATA_BLOCK, Site


def index(values) -> np.ndarray:
    """An int64 index array, the type ONNX takes for Gather indices and Slice bounds."""
    return np.asarray(values, dtype=np.int64)


class NameTable:
    """The names a model uses, tensors and nodes of every graph; ``fresh`` hands out new ones."""

    def __init__(self, graph: gs.Graph):
        self.used = set()
        for subgraph in all_graphs(graph):
            self.used |= set(subgraph.tensors()) | {node.name for node in subgraph.nodes}

    def fresh(self, name: str) -> str:
        """``name``, or ``name_<n>`` with the smallest n that is free; reserved from now on."""
        candidate, n = name, 0
        while candidate in self.used:
            candidate, n = f"{name}_{n}", n + 1
        self.used.add(candidate)
        return candidate


@dataclass
class BlockBoundary:
    """Where a form's activations change between feature layout ``[d_1..d_L, k * b]`` (``flat``) and its block
    layout (``blocks``) through a path of ``nodes``, into block layout when ``entering``, else out of it; a
    per-feature ``[k * b]`` constant takes ``constant_shape`` in block layout. A block form records one where
    its input enters block layout and one where its output leaves it. The tensors are read off the nodes when
    asked for: the last node of an exit may come to write the op's own output."""

    nodes: list[gs.Node]
    entering: bool
    k: int
    b: int
    constant_shape: tuple[int, ...]

    @property
    def flat(self) -> gs.Variable:
        return self.nodes[0].inputs[0] if self.entering else self.nodes[-1].outputs[0]

    @property
    def blocks(self) -> gs.Variable:
        return self.nodes[-1].outputs[0] if self.entering else self.nodes[0].inputs[0]


class Builder:
    """Collects the nodes that replace ``op`` and their metadata; ``shared`` caches branch weights across nodes."""

    def __init__(self, op: WeightedOp, shared: dict, names: NameTable, site: Optional[Site] = None):
        self.op, self.shared, self.names, self.prefix = op, shared, names, op.node.name
        self.site = site or op.site  # as planned: its weight's name from before any folding
        self._matrix = None
        shape = op.node.inputs[0].shape
        self.rank = len(shape) if shape is not None else 0  # of input and output; 0 when unknown
        self.nodes: list[gs.Node] = []
        self.metadata: dict[str, dict[str, str]] = {}  # node name -> its metadata_props
        self.entry: Optional[BlockBoundary] = None
        self.exit: Optional[BlockBoundary] = None
        self._block: Optional[int] = None

    @contextmanager
    def for_block(self, block: int) -> Iterator[None]:
        """Nodes emitted inside serve block ``block`` alone."""
        self._block = block
        try:
            yield
        finally:
            self._block = None

    def constant(self, suffix: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.names.fresh(f"{self.prefix}/{suffix}"), np.ascontiguousarray(values))

    def emit(self, op_type: str, suffix: str, inputs, attrs=None,
             output: Optional[gs.Variable] = None) -> gs.Variable:
        """Append one node; returns its (single) output."""
        name = self.names.fresh(f"{self.prefix}/{suffix}")
        output = output if output is not None else gs.Variable(name)
        self.nodes.append(gs.Node(op_type, name, attrs or {}, list(inputs), [output]))
        self.metadata[name] = {**self.site.metadata(),
                               **({} if self._block is None else {METADATA_BLOCK: str(self._block)})}
        return output

    def select(self, x, cols: np.ndarray, n_in: int, suffix: str):
        """The input features ``cols`` of ``x``, in that order, along the last axis: ``x`` itself, a Slice
        for a contiguous range, else a permutation."""
        if np.array_equal(cols, np.arange(n_in)):
            return x
        if np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols))):
            return self.slice(x, int(cols[0]), int(cols[-1]) + 1, suffix)
        return self.permute(x, cols, suffix)

    def slice(self, x, start: int, end: int, suffix: str):
        """``x[..., start:end]``."""
        bounds = [self.constant(f"{suffix}_{name}", index([v]))
                  for name, v in (("start", start), ("end", end), ("axis", -1))]
        return self.emit("Slice", suffix, [x, *bounds])

    def permute(self, x, order: np.ndarray, suffix: str, output: Optional[gs.Variable] = None):
        """``x[..., order]`` (module rule)."""
        indices = self.constant(f"{suffix}_idx", index(order))
        rank = self.rank
        if rank < 2:
            return self.emit("Gather", suffix, [x, indices], {"axis": -1}, output)
        front = self.emit("Transpose", f"{suffix}_front", [x], {"perm": [rank - 1, *range(rank - 1)]})
        rows = self.emit("Gather", suffix, [front, indices], {"axis": 0})
        return self.emit("Transpose", f"{suffix}_back", [rows], {"perm": [*range(1, rank), 0]}, output)

    def branch_weight(self, rows: np.ndarray, cols: np.ndarray, k: int):
        """``W[rows, cols]`` in the node's own layout (and type, after its Cast), shared with other users of
        the same weight tensor in the same graph."""
        op = self.op
        key = (id(op.weight), op.layout, id(op.graph) if op.cast else None, rows.tobytes(), cols.tobytes())
        if key not in self.shared:
            if self._matrix is None:
                self._matrix = op.matrix()  # loaded once per node, released with the builder
            block = self.constant(f"W{k}", op.layout.from_matrix(self._matrix[np.ix_(rows, cols)]))
            if op.cast is not None:
                block = self.emit("Cast", f"W{k}_cast", [block], {"to": op.cast.attrs["to"]})
            self.shared[key] = block
        return self.shared[key]

    def bias_part(self, rows: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Gemm's C restricted to output ``rows`` (unchanged when C broadcasts over outputs), times ``scale``."""
        c = self.op.bias.values
        part = c[..., rows] if c.ndim and c.shape[-1] == self.op.shape[0] else c
        return (part * scale).astype(c.dtype)

    def shared_weight(self, key: tuple, suffix: str, make):
        """The weight ``make()`` (values in the stored type, after a Cast as the node's own weight) for ``key``,
        made once and shared with the other users of the same weight tensor asking for the same key."""
        op = self.op
        key = (id(op.weight), op.layout, id(op.graph) if op.cast else None, *key)
        if key not in self.shared:
            weight = self.constant(suffix, make())
            if op.cast is not None:
                weight = self.emit("Cast", f"{suffix}_cast", [weight], {"to": op.cast.attrs["to"]})
            self.shared[key] = weight
        return self.shared[key]

    def reshape(self, x, shape, suffix: str) -> gs.Variable:
        """``Reshape(x, shape)`` with a constant target (0 copies the input's dim, -1 is inferred)."""
        return self.emit("Reshape", suffix, [x, self.constant(f"{suffix}_shape", index(shape))])

    def leading_shape(self, x, suffix: str) -> gs.Variable:
        """The shape of ``x`` without its last dim."""
        if (self.op.graph.opset or 0) >= 15:
            return self.emit("Shape", suffix, [x], {"end": -1})
        shape = self.emit("Shape", f"{suffix}_full", [x])
        return self.emit("Slice", suffix, [shape, self.constant(f"{suffix}_start", index([0])),
                                           self.constant(f"{suffix}_end", index([-1]))])

    def gather_features(self, x, indices: np.ndarray, suffix: str, output: Optional[gs.Variable] = None):
        """``x[..., indices]`` as ``GatherElements`` (module rule); ``x`` has the node input's rank."""
        rank = self.rank
        idx = self.constant(f"{suffix}_idx", index(indices).reshape((1,) * (rank - 1) + (-1,)))
        shape = self.emit("Concat", f"{suffix}_shape", [self.leading_shape(x, f"{suffix}_lead"),
                                                        self.constant(f"{suffix}_width", index([len(indices)]))],
                          {"axis": 0})
        expanded = self.emit("Expand", f"{suffix}_expand", [idx, shape])
        return self.emit("GatherElements", suffix, [x, expanded], {"axis": -1}, output)
