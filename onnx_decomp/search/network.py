"""The model prepared for annealing: its annealable layers, and one ONNX Runtime session that takes their
weights as inputs.

Rules:
- The model is normalised once (``io.graph``: Constant weights folded into initializers, node names unique;
  ``FoldBatchNorm``: BatchNormalization after a Conv folded into it; ``ZeroConvBias``: a Conv without a bias
  gets a zero one, so refits can move means into it; both exact).
- A layer is a MatMul/Gemm or a Conv of one group with a constant float weight (``onnx_decomp_passes.WeightedOp``)
  in the main graph whose weight no other node reads; its per-output bias is the op's output bias
  (``WeightedOp.output_bias``: Gemm's ``beta * C``, a Conv's ``B``, or the constant of the one Add that alone
  reads a MatMul's output). Other MatMul/Gemm/Conv nodes are left out with the reason: activations inside a
  subgraph cannot be observed; one refit cannot serve a weight read by two nodes; a Conv of several groups
  (depthwise) is cut with the channels around it or left as it is; a Conv's input shape must be known.
- A layer's rows are its activation vectors: a MatMul/Gemm's input with every leading index flattened, a
  Conv's patches (``patches.Geometry``: the unrolled window at each output position; a 1 x 1 Conv's pixels);
  its multiply-accumulates count one product per row (``vectors``: a Conv's output positions).
- Refits work on effective weights (``alpha * W``, ``W [n_out, n_in]`` whatever the stored layout, and
  ``scale * bias``) and store back through the op's view (``WeightedOp.stored_from``).
- One session for the whole run (``tools/bench_gate.py`` measured this fastest: a session built per step
  spends most of its time loading the model): the layers' weights and biases become graph inputs, fed the
  arrays of the state under test at every run, and the layers' activation inputs become extra outputs
  ("taps"). Its idle threads do not spin: numpy works between its runs.
- Taps keep at most ``max_rows`` rows per layer, the same seeded subset of each batch's rows in every run,
  so that dense and cut activations stay paired row by row; MatMul/Gemm layers reading one tensor share one
  array of its rows.
- Memory: each layer's weights are held once, in its arrays (the proto keeps empty tensors in their place),
  or, where the model keeps a weight in external data, not at all: it is read from its file at every use
  (a run, a refit, a plan), as the rewrite reads weights; by block, each block's own file (one layer of a
  1.1B-parameter Llama: the FFN's 132 MiB are then in memory only while a run or a refit uses them). The
  search keeps a block cut's fits as their ``Blocks`` (a cut weight is mostly zeros) and makes the array only
  to run or read one; a fit's values from ``on_disk.SPILL_BYTES`` on are kept on disk between their uses
  (``search.on_disk``).
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from onnx_decomp.config import SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.model_stats import counted_shapes
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.graph import export_graph, held_values
from onnx_decomp.io.model_io import load_references, stored_tensor
from onnx_decomp.runtime.sessions import make_session, ort_message
from onnx_decomp.search.on_disk import Spillable, loaded, spilled
from onnx_decomp.search.patches import Geometry
from onnx_decomp.search.products import find_products
from onnx_decomp_passes import (CONV, BlockPlan, FoldBatchNorm, Layout, OutputBias, Site, WeightedOp, ZeroConvBias,
                                 find_weighted_ops)
from onnx_decomp_passes.ops import stored_values

if TYPE_CHECKING:  # cuts are asked for their MACs only
    from onnx_decomp.search.families import Cut

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Blocks:
    """A stored weight that is zero outside some blocks of its matrix view ``W [n_out, n_in]`` (``Layout``):
    per block its rows, its columns and the values stored there, ``values[i, j]`` at ``W[rows[i], cols[j]]``
    (on disk from ``SPILL_BYTES`` on)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    layout: Layout
    blocks: tuple[tuple[np.ndarray, np.ndarray, Spillable], ...]

    @classmethod
    def of(cls, shape: tuple[int, ...], dtype: np.dtype, layout: Layout,
           blocks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> "Blocks":
        return cls(tuple(shape), dtype, layout, tuple((rows, cols, spilled(values)) for rows, cols, values in blocks))

    def array(self) -> np.ndarray:
        array = np.zeros(self.shape, self.dtype)
        view = self.layout.to_matrix(array)  # a view: writing it writes ``array``
        for rows, cols, values in self.blocks:
            view[np.ix_(rows, cols)] = loaded(values)
        return array


Stored = tuple[Union[Spillable, Blocks], Optional[np.ndarray]]  # (weight, bias) as the model stores them
Weights = Mapping[Site, Stored]  # layer site -> stored arrays of the state under test


def unpacked(weight: Union[Spillable, Blocks]) -> np.ndarray:
    return weight.array() if isinstance(weight, Blocks) else loaded(weight)


@dataclass
class Layer:
    """One annealable weighted op of the run (module rules): ``index`` is its position in topological order,
    ``op`` the one view of its weight (layout, alpha, bias rule), ``output_bias`` its per-output bias."""

    index: int
    op: WeightedOp
    output_bias: Optional[OutputBias]
    vectors: int  # activation vectors per inference at the run's input shapes
    held_weight: Optional[np.ndarray]  # None where it lives in external data (module rule) or once released
    stored_bias: Optional[np.ndarray]
    geometry: Optional[Geometry] = None  # a Conv's

    @property
    def stored_weight(self) -> np.ndarray:
        """The weight as the model stores it: the held array, or read from its file afresh (module rule)."""
        return self.held_weight if self.held_weight is not None else stored_values(self.op.weight)

    @property
    def conv(self) -> bool:
        return self.op.layout is Layout.KERNEL

    @property
    def node(self) -> str:
        return self.op.node.name

    @property
    def weight(self) -> str:
        return self.op.weight.name

    @property
    def site(self) -> Site:
        return self.op.site

    @property
    def input(self) -> str:
        return self.op.node.inputs[0].name

    @property
    def bias(self) -> Optional[str]:
        """The name of the bias initializer, if the layer has one."""
        return None if self.output_bias is None else self.output_bias.tensor.name

    @property
    def shape(self) -> tuple[int, int]:
        return self.op.shape

    @property
    def dense_macs(self) -> int:
        return self.vectors * self.shape[0] * self.shape[1]

    def rows(self, activation: np.ndarray, pick: Callable[[int], Optional[np.ndarray]]) -> np.ndarray:
        """The rows (module rules) of an input ``activation`` that ``pick(count)`` chooses (None: all)."""
        if self.geometry is None:
            rows = activation.reshape(-1, self.shape[1])
            chosen = pick(len(rows))
            return rows if chosen is None else rows[chosen]
        return self.geometry.rows(activation, pick(self.geometry.positions(activation.shape)))

    def matrix(self, stored: Optional[Stored] = None, dtype=np.float64) -> np.ndarray:
        """Effective ``W [n_out, n_in]`` of ``stored`` arrays, or of the original ones, as ``dtype`` (a
        read-only view of the stored array where no conversion is needed)."""
        view = self.op.layout.to_matrix(self.stored_weight if stored is None else unpacked(stored[0]))
        if self.op.alpha == 1 and view.dtype == dtype:
            return view
        return self.op.alpha * view.astype(dtype)

    @cached_property
    def live_rows(self) -> np.ndarray:
        """Outputs that read something: rows with a nonzero weight."""
        return np.any(self.op.layout.to_matrix(self.stored_weight) != 0, axis=1)

    def bias_vector(self, stored: Optional[Stored] = None) -> np.ndarray:
        """Effective per-output bias (float64; zeros when the layer has none)."""
        bias = self.stored_bias if stored is None else stored[1]
        scale = 0.0 if self.output_bias is None else self.output_bias.scale
        return np.zeros(self.shape[0]) if bias is None else scale * bias.astype(np.float64).reshape(-1)

    def store(self, matrix: np.ndarray, bias: Optional[np.ndarray]) -> Stored:
        """Effective weight and bias back to the stored layout, shape and element type (the weight on disk from
        ``SPILL_BYTES`` on)."""
        return spilled(self.op.stored_from(matrix)), self.store_bias(bias)

    def store_blocks(self, blocks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                     bias: Optional[np.ndarray]) -> Stored:
        """An effective weight given by its blocks ``(rows, cols, W[rows][:, cols])``, zero elsewhere, and
        bias back to the stored scale and element type; the weight kept as its ``Blocks``."""
        alpha, dtype = self.op.alpha, np.dtype(self.op.weight.dtype)
        stored = tuple((rows, cols, np.asarray(values if alpha == 1 else values / alpha, dtype))
                       for rows, cols, values in blocks)
        return Blocks.of(self.op.weight.shape, dtype, self.op.layout, stored), self.store_bias(bias)

    def kept(self, plan: BlockPlan) -> Blocks:
        """The original weights inside ``plan``'s blocks, zero elsewhere."""
        stored = self.stored_weight
        view = self.op.layout.to_matrix(stored)
        return Blocks.of(stored.shape, stored.dtype, self.op.layout,
                         [(b.rows, b.cols, view[np.ix_(b.rows, b.cols)]) for b in plan.branches])

    def store_bias(self, bias: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """Effective bias back to the stored scale, shape and element type (the stored one where either is None)."""
        if self.stored_bias is None or bias is None:
            return self.stored_bias
        return (bias / self.output_bias.scale).reshape(self.stored_bias.shape).astype(self.stored_bias.dtype)


def vectors_of(shapes: Mapping[str, list], tensor: str, n_in: int) -> int:
    """Activation vectors per inference reaching a layer at the run's input shapes (1 when unknown)."""
    shape = shapes.get(tensor)
    if not shape or None in shape:
        return 1
    return max(1, int(np.prod(shape)) // max(n_in, 1))


def op_vectors(shapes: Mapping[str, list], op: WeightedOp) -> int:
    """Rows per inference of any weighted op: a Conv's output positions (module rules)."""
    if op.layout is Layout.KERNEL:
        return vectors_of(shapes, op.node.outputs[0].name, op.shape[0])
    return vectors_of(shapes, op.node.inputs[0].name, op.shape[1])


def _left_out(op: WeightedOp, graph, shapes: Mapping[str, list]) -> Optional[str]:
    """Why ``op`` is no layer (module rules), or None."""
    if op.graph is not graph:
        return "inside a subgraph: its activations cannot be observed"
    if len(op.weight.outputs) != 1 or op.weight in graph.outputs:
        return f"weight {op.weight.name!r} is read by several nodes: one refit cannot serve them"
    if op.groups != 1:
        return f"Conv of {op.groups} groups: cut with the channels around it, or left as it is"
    x = shapes.get(op.node.inputs[0].name)
    if op.layout is Layout.KERNEL and (not x or None in x):
        return "Conv input shape unknown (use --input-shape)"
    return None


def find_layers(ctx: ModelContext, shapes: Mapping[str, list]) -> tuple[list[Layer], list[tuple[str, str]]]:
    """The annealable layers of the normalised graph in topological order, and the (node, reason) of every
    MatMul/Gemm/Conv left out (module rules)."""
    graph = ctx.graph
    position = {id(node): i for i, node in enumerate(graph.nodes)}
    convs, skipped = find_weighted_ops(graph, CONV)
    layers, left_out = [], [(s.node_name, s.reason) for s in [*ctx.skipped, *skipped]]
    for op in [*ctx.ops, *convs]:
        reason = _left_out(op, graph, shapes)
        if reason is not None:
            left_out.append((op.node.name, reason))
            continue
        bias = op.output_bias()
        geometry = Geometry.of(op.node.attrs, op.weight.shape[2:], shapes[op.node.inputs[0].name][2:]) \
            if op.layout is Layout.KERNEL else None
        layers.append(Layer(0, op, bias, op_vectors(shapes, op), held_values(op.weight),
                            None if bias is None else stored_values(bias.tensor), geometry))
    layers.sort(key=lambda layer: position[id(layer.op.node)])
    for index, layer in enumerate(layers):
        layer.index = index
    return layers, left_out


@dataclass
class RunResult:
    outputs: list[np.ndarray]  # the model's outputs, batches joined along the first axis
    taps: dict[Site, np.ndarray]  # layer site -> kept activation rows [rows, n_in]


class Network:
    """The normalised model, its layers, and the one session that runs any state of their weights. ``proto``
    holds the layers' weights and biases as empty tensors, never read into it: their values are the layers'
    arrays (``model_with`` puts them back)."""

    def __init__(self, ctx: ModelContext, session: SessionConfig = SessionConfig(), max_rows: int = 4096,
                 seed: int = 0):
        FoldBatchNorm()(ctx.graph)
        ZeroConvBias()(ctx.graph)
        self.proto = export_graph(ctx.graph, like=ctx.proto)
        self.shapes = counted_shapes(self.proto, ctx.specs, base_dir=ctx.base_dir,
                                     every_tensor=True)  # every tensor, by ORT if need be
        self.layers, self.left_out = find_layers(ctx, self.shapes)
        held = {name for layer in self.layers for name in (layer.weight, layer.bias) if name}
        for tensor in self.proto.graph.initializer:
            if tensor.name in held:  # their values are the layers' arrays (``model_with``)
                tensor.CopyFrom(helper.make_tensor(tensor.name, tensor.data_type, [0], []))
        load_references(self.proto, ctx.base_dir)  # self-contained: the other tensors read in
        self.linear = [layer for layer in self.layers if not layer.conv]  # what the block families plan
        self.by_site = {layer.site: layer for layer in self.layers}
        self.outputs = [o.name for o in self.proto.graph.output]
        self.max_rows, self.seed = max_rows, seed
        inputs = {value.name for value in self.proto.graph.input}
        self._tapped = [layer for layer in self.layers if layer.input not in inputs]
        self._tap_names = list(dict.fromkeys(layer.input for layer in self._tapped if layer.input not in self.outputs))
        # layer site -> its array of rows: MatMul/Gemm layers reading one tensor share one, each Conv has its own
        self._tap_keys = {layer.site: layer.input if layer.geometry is None else layer.site for layer in self.layers}
        self._tap_readers = {self._tap_keys[layer.site]: layer for layer in self.layers}  # a layer per array
        nodes = {layer.node for layer in self.layers}
        self.other_macs = sum(op_vectors(self.shapes, op) * op.shape[0] * op.shape[1]
                              for op in [*ctx.ops, *find_weighted_ops(ctx.graph, CONV)[0]] if op.node.name not in nodes)
        self.products = find_products(ctx, self.layers, self.shapes)  # activation x activation MatMuls
        self.session = make_session(self._session_model(), replace(session, spin=False)) if self.layers else None

    def _session_model(self) -> onnx.ModelProto:
        """The model with the layers' weights and biases as inputs and their activations as outputs."""
        def typed(name: str, dtype, shape) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)

        graph = self.proto.graph
        moved = {layer.weight: (layer.op.weight.dtype, layer.op.weight.shape) for layer in self.layers}
        moved.update({layer.bias: (layer.stored_bias.dtype, layer.stored_bias.shape)
                      for layer in self.layers if layer.bias})
        inputs = [v for v in graph.input if v.name not in moved]
        inputs += [typed(name, dtype, shape) for name, (dtype, shape) in moved.items()]
        readers = {layer.input: layer for layer in self._tapped}
        taps = [typed(name, layer.op.weight.dtype, None) for name, layer in readers.items() if name in self._tap_names]
        new = helper.make_graph(graph.node, graph.name, inputs, [*graph.output, *taps],
                                [t for t in graph.initializer if t.name not in moved], value_info=graph.value_info)
        new.sparse_initializer.extend(graph.sparse_initializer)
        model = helper.make_model(new, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)
        model.functions.extend(self.proto.functions)
        return model

    def feeds(self, weights: Optional[Weights] = None) -> Iterator[tuple[str, np.ndarray]]:
        """Every layer's weight and bias, one at a time: from ``weights`` where given, else the original
        arrays."""
        for layer in self.layers:
            weight, bias = (weights or {}).get(layer.site, (layer.stored_weight, layer.stored_bias))
            yield layer.weight, unpacked(weight)
            if layer.bias:
                yield layer.bias, bias

    def _rows(self, batch: int, count: int, budget: int) -> Optional[np.ndarray]:
        """The seeded subset of a batch's activation rows kept by the taps (None: all of them)."""
        if count <= budget:
            return None
        return np.sort(np.random.default_rng((self.seed, batch)).choice(count, budget, replace=False))

    def run(self, batches: Sequence[dict], weights: Optional[Weights] = None, taps: bool = False) -> RunResult:
        """The model's outputs (and the layers' activations) on ``batches`` with ``weights`` in force."""
        names = self.outputs + (self._tap_names if taps else [])
        fixed = dict(self.feeds(weights))
        outputs: list[list] = [[] for _ in self.outputs]
        kept: dict = {key: [] for key in self._tap_readers} if taps else {}
        budget = math.ceil(self.max_rows / max(len(batches), 1))
        for number, batch in enumerate(batches):
            try:
                values = dict(zip(names, self.session.run(names, {**batch, **fixed})))
            except Exception as error:  # onnxruntime's own exception types
                raise UnsupportedConstructError(
                    f"ONNX Runtime failed on the calibration data: {ort_message(error)}") from None
            for collected, name in zip(outputs, self.outputs):
                collected.append(values[name])
            for key, layer in self._tap_readers.items() if taps else ():
                activation = np.asarray(batch[layer.input] if layer.input in batch else values[layer.input])
                kept[key].append(layer.rows(activation, lambda count: self._rows(number, count, budget)))
        joined = {key: np.concatenate(rows) for key, rows in kept.items()}
        return RunResult([np.concatenate(c) for c in outputs],
                         {site: joined[key] for site, key in self._tap_keys.items()} if taps else {})

    def model_with(self, weights: Weights, data: Optional[Path] = None) -> onnx.ModelProto:
        """The normalised model with ``weights`` stored in place of the layers' originals (``{}``: the
        original model); with ``data``, their large arrays are written to that file one at a time and referenced
        there (``model_io.stored_tensor``): the model, to be written beside it, then holds none of them."""
        model = onnx.ModelProto()
        model.CopyFrom(self.proto)
        tensors = {tensor.name: tensor for tensor in model.graph.initializer}
        with open(data, "wb") if data is not None else nullcontext() as file:
            for name, array in self.feeds(weights):
                tensors[name].CopyFrom(stored_tensor(array, name, file))
        return model

    def release(self) -> None:
        """Let go of the session and of the layers' weight arrays (the masked model holds its own copy): nothing
        runs or refits the layers after the search (their shapes still count MACs)."""
        self.session = None
        for layer in self.layers:
            layer.held_weight = None

    def macs(self, cuts: Mapping[Site, "Cut"]) -> int:
        """MatMul/Gemm/Conv multiply-accumulates per inference with ``cuts`` (layer site -> ``families.Cut``) in
        force, activation products included (``search.products``)."""
        return self.other_macs + sum(layer.vectors * cuts[layer.site].macs(layer) if layer.site in cuts
                                     else layer.dense_macs for layer in self.layers) + \
            sum(product.kept(cuts, self.by_site) for product in self.products)

    @property
    def dense_macs(self) -> int:
        return self.macs({})
