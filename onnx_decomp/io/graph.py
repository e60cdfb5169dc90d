"""ModelProto <-> onnx-graphsurgeon graph: the one graph form every driver hands to the back end.

Rules on import: tensor names are made unique across scopes first (``io.scopes``); an initializer that is
also a graph input (overridable at run time) enters the graph as a plain input, so no pass treats it as a
constant weight, and ``export_graph`` puts its default value back, so the model's interface and defaults
are unchanged. Below IR version 4 every initializer is listed as an input, as that IR requires, and ONNX
Runtime holds them constant: they are weights like any other, and the export lists every initializer of the
main graph (new ones too) as an input again. Constant values are read when used, not kept (``TensorValues``),
so a large model's weights are held once. onnx-graphsurgeon's own warnings are silenced while it works.
Where only shapes matter (the cost model), a constant may be a ``ShapeOnly`` placeholder: zeros without
memory where it is read, an initializer whose data is nowhere where it is exported.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx.numpy_helper import to_array
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.logger import G_LOGGER

from onnx_decomp.io.scopes import unique_scoped_names
from onnx_decomp.io.shapes import SMALL_TENSOR, symbolic_types
from onnx_decomp.io.walk import iter_graphs
from onnx_decomp_passes import FoldConstantNodes, PassManager, UniqueNodeNames, all_graphs
from onnx_decomp_passes.ops import stored_values

MODEL_FIELDS = ("doc_string", "domain", "model_version", "producer_name", "producer_version")
IR_INITIALIZERS_AS_INPUTS = 4  # below this IR version every initializer is listed as a graph input too


@contextmanager
def _quiet() -> Iterator[None]:
    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.severity = severity


def overridable_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's initializers that are also graph inputs, from IR version 4 (below it the
    listing is required of every initializer and means nothing: ONNX Runtime holds them constant)."""
    if model.ir_version < IR_INITIALIZERS_AS_INPUTS:
        return []
    inputs = {value.name for value in model.graph.input}
    return [t.name for t in model.graph.initializer if t.name in inputs]


def _without_overridable(model: onnx.ModelProto) -> onnx.ModelProto:
    names = set(overridable_initializers(model))
    if not names:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [t for t in copy.graph.initializer if t.name not in names]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    return copy


class TensorValues(LazyValues):
    """A constant's values read from its TensorProto, or from the file it references under ``base_dir``, in
    one copy, each time they are asked for (the back end reads them through ``stored_values``)."""

    def __init__(self, tensor: onnx.TensorProto, base_dir: Optional[Path]):
        super().__init__(tensor)
        self.base_dir = str(base_dir or "")

    def load(self):
        return to_array(self.tensor, self.base_dir)


class ShapeOnly(LazyValues):
    """A tensor's shape and type alone (module rule)."""

    def __init__(self, name: str, shape: Sequence[int], dtype: np.dtype):
        tensor = onnx.TensorProto(name=name, dims=list(shape), data_type=helper.np_dtype_to_tensor_dtype(dtype),
                                  data_location=onnx.TensorProto.EXTERNAL)
        tensor.external_data.add(key="location", value="shape-only")
        super().__init__(tensor)

    def load(self) -> np.ndarray:
        return np.broadcast_to(np.zeros((), helper.tensor_dtype_to_np_dtype(self.tensor.data_type)), self.shape)


def held_values(tensor: gs.Constant) -> Optional[np.ndarray]:
    """A constant's values where the model holds them, None where they live in external data (to be read
    through ``stored_values`` at every use)."""
    lazy = tensor._values
    if isinstance(lazy, LazyValues) and lazy.tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return stored_values(tensor)


def shape_only(tensor: gs.Constant):
    """A ``ShapeOnly`` placeholder for a constant over ``SMALL_TENSOR`` elements, else its values (shape
    inference may read small ones: shapes computed in the graph)."""
    if int(np.prod(tensor.shape)) <= SMALL_TENSOR:
        return stored_values(tensor)
    return ShapeOnly(tensor.name, tensor.shape, np.dtype(tensor.dtype))


def to_shapes_only(graph: gs.Graph) -> None:
    """Every constant of ``graph`` and its subgraphs held as values made ``shape_only``."""
    for subgraph in all_graphs(graph):
        for tensor in subgraph.tensors().values():
            if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, LazyValues):
                tensor._values = shape_only(tensor)


def import_graph(model: onnx.ModelProto, base_dir: Optional[Path] = None) -> gs.Graph:
    """The model as a graph (module rules) whose tensors carry their inferred types (the rewrite needs
    ranks; inferred on the weight-free skeleton, so at any model size), Constant weights folded and node
    names unique; constants referencing external data are read from files under ``base_dir`` when used."""
    model = _without_overridable(unique_scoped_names(model))
    with _quiet():
        graph = gs.import_onnx(model)
    types = symbolic_types(model)
    for subgraph in all_graphs(graph):
        for tensor in subgraph.tensors().values():
            if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues):
                tensor._values = TensorValues(tensor._values.tensor, base_dir)
            if isinstance(tensor, gs.Variable) and tensor.name in types:
                dtype, shape = types[tensor.name]
                tensor.dtype = tensor.dtype if tensor.dtype is not None else dtype
                tensor.shape = tensor.shape if tensor.shape is not None else shape
    PassManager([FoldConstantNodes(), UniqueNodeNames()])(graph)
    return graph


def export_graph(graph: gs.Graph, like: Optional[onnx.ModelProto] = None,
                 node_metadata: Optional[Mapping[str, Mapping[str, str]]] = None) -> onnx.ModelProto:
    """The graph as a ModelProto in its IR version's conventions (module rule); with ``like`` (the model it
    was imported from), its model-level fields, metadata and the default values of its overridable
    initializers are carried over; ``node_metadata`` (node name -> key -> value) becomes the named nodes'
    ``metadata_props``, in any graph."""
    with _quiet():
        model = gs.export_onnx(graph)
    for node in (n for one in iter_graphs(model.graph) for n in one.node) if node_metadata else ():
        for key, value in node_metadata.get(node.name, {}).items():
            node.metadata_props.add(key=key, value=value)
    if like is not None:
        for name in MODEL_FIELDS:
            setattr(model, name, getattr(like, name))
        model.metadata_props.extend(like.metadata_props)
        defaults = set(overridable_initializers(like))
        model.graph.initializer.extend(t for t in like.graph.initializer if t.name in defaults)
    if model.ir_version < IR_INITIALIZERS_AS_INPUTS:
        listed = {value.name for value in model.graph.input}
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                 for t in model.graph.initializer if t.name not in listed)
    return model
