"""Shapes: the concrete input shapes of a run, and ONNX shape inference that works at any model size.

Rule: shape inference runs on a weight-free skeleton of the model, where every initializer larger than
``SMALL_TENSOR`` elements is replaced by a typed graph input (inference needs its shape, not its values), so
a model above the 2 GiB protobuf limit is inferred like any other. Small initializers stay: they may be
shape operands (Reshape, Slice bounds) whose values inference reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.walk import iter_graphs

SMALL_TENSOR = 1024  # elements
InputShapes = Optional[Mapping[str, Sequence[int]]]


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def input_specs(model: onnx.ModelProto, overrides: InputShapes = None,
                notes: Optional[list[str]] = None) -> list[InputSpec]:
    """Concrete shapes of the graph inputs: ``overrides`` first, symbolic or unknown dims as 1 (noted)."""
    overrides = dict(overrides or {})
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        if value.name in overrides:
            shape = tuple(overrides.pop(value.name))
            if len(shape) != len(dims):
                raise UnsupportedConstructError(
                    f"--input-shape {value.name}: rank {len(shape)} given, the input has rank {len(dims)}"
                )
            for axis, (dim, size) in enumerate(zip(dims, shape)):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise UnsupportedConstructError(f"--input-shape {value.name}: dim {axis} is fixed to "
                                                    f"{dim.dim_value} in the model, {size} given")
        else:
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
            free = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
            if free and notes is not None:
                notes.append(f"input {value.name!r}: dims {free} set to 1 (use --input-shape)")
        specs.append(InputSpec(value.name, helper.tensor_dtype_to_np_dtype(tensor_type.elem_type), shape))
    if overrides:
        raise UnsupportedConstructError(f"--input-shape names no input of the model: {sorted(overrides)}")
    return specs


def batched_inputs(model: onnx.ModelProto) -> set[str]:
    """The graph inputs (initializers aside) whose first dim is symbolic: the batch a caller chooses."""
    initializers = {t.name for t in model.graph.initializer}
    return {value.name for value in model.graph.input if value.name not in initializers
            and value.type.tensor_type.shape.dim and not value.type.tensor_type.shape.dim[0].HasField("dim_value")}


def skeleton(model: onnx.ModelProto, specs: Optional[Sequence[InputSpec]] = None) -> onnx.ModelProto:
    """The model of the module rule: every initializer over ``SMALL_TENSOR`` elements of the main graph is a
    typed graph input instead; with ``specs`` the real graph inputs take those concrete shapes. Nodes,
    subgraphs, functions and value_info are kept: ``onnx.checker`` can check it in place of the model."""
    graph = model.graph
    big = {t.name for t in graph.initializer if int(np.prod(t.dims)) > SMALL_TENSOR}
    initializers = {t.name for t in graph.initializer}
    if specs is None:
        inputs = [value for value in graph.input if value.name not in big]
    else:
        inputs = [helper.make_tensor_value_info(s.name, helper.np_dtype_to_tensor_dtype(s.dtype), s.shape)
                  for s in specs] + [value for value in graph.input if value.name in initializers - big]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in graph.initializer
               if t.name in big]
    result = helper.make_model(
        helper.make_graph(graph.node, graph.name, inputs, graph.output,
                          [t for t in graph.initializer if t.name not in big], value_info=graph.value_info),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return result


def _inferred_skeleton(model: onnx.ModelProto, specs: Optional[Sequence[InputSpec]],
                       data_prop: bool = False) -> onnx.ModelProto:
    """The skeleton at ``specs`` (the model's own input shapes when None), shape-inferred from scratch
    (``data_prop``: through shapes computed in the graph too)."""
    bare = skeleton(model, specs)
    for graph in iter_graphs(bare.graph):
        del graph.value_info[:]  # stale annotations (symbolic dims) would shadow the concrete outer shapes
    return onnx.shape_inference.infer_shapes(bare, data_prop=data_prop)


def _typed_values(model: onnx.ModelProto, specs: Optional[Sequence[InputSpec]], data_prop: bool = False):
    """Every value of the inferred skeleton and its subgraphs, with its tensor type, by name."""
    for graph in iter_graphs(_inferred_skeleton(model, specs, data_prop).graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.type.HasField("tensor_type"):
                yield value.name, value.type.tensor_type


def concrete_shapes(model: onnx.ModelProto, specs: Sequence[InputSpec], data_prop: bool = False) -> dict[str, list]:
    """Every tensor's inferred shape at ``specs`` (None for a dim inference could not resolve), over the
    graph and its subgraphs; initializers included. ``data_prop`` also follows shapes computed in the graph
    (Shape -> Concat -> Expand)."""
    shapes = {t.name: list(t.dims) for graph in iter_graphs(model.graph) for t in graph.initializer}
    for name, tensor_type in _typed_values(model, specs, data_prop):
        shapes[name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return shapes


def symbolic_types(model: onnx.ModelProto) -> dict[str, tuple[Optional[np.dtype], Optional[list]]]:
    """Every inferred tensor's dtype and shape at the model's own input shapes: dims are ints, names of
    symbolic dims, or None when unknown; the shape is None when not even the rank is known."""
    types = {}
    for name, tensor_type in _typed_values(model, None):
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) if tensor_type.elem_type else None
        shape = None
        if tensor_type.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tensor_type.shape.dim]
        types[name] = (dtype, shape)
    return types
