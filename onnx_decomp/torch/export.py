"""Export a PyTorch model to ONNX with its initialization recorded for the statistical criterion.

Rules:
- Either exporter: ``dynamo=True`` (``torch.export``, the default) or ``dynamo=False`` (TorchScript). The
  model is exported in eval mode (its mode is restored after). Input names default to the names of
  ``forward``'s arguments.
- ``dynamic_batch``: dimension 0 of every tensor input is the symbolic ``batch``. ``dynamic_shapes`` (input
  name -> {axis: dim name or ``torch.export.Dim``}) names every symbolic dim instead; inputs sharing a name
  share the dim (a ``Dim`` carries bounds, e.g. ``Dim("sequence", max=512)``). Either exporter takes it.
  ``torch.export`` may fix a dim whose example size is 1 (it does for attention): such an export is refused.
- Initializers are bound to parameters by ``binding.bind_initializers`` (by name, then by exact value or
  transposed value). For every bound initializer whose parameter has a recipe in ``init``, metadata key
  ``onnx_decomp.null/<initializer>`` holds the spec string.
- ``reference_path``: the initial tensors of all bound initializers, in the initializer's own layout (a
  transposed copy where the initializer is transposed), are written as an ONNX model with the same
  initializer names, and key ``onnx_decomp.init_reference`` holds its path relative to the model's folder,
  inside which it must lie (``io.references``: the tool follows a model's references there only).
- The dynamo exporter's per-node ``pkg.torch.onnx.stack_trace`` entries are dropped: they hold local file
  paths, so the same model would give different files on different machines.
- ``metadata``: further ``metadata_props`` entries (key -> value), e.g. where the training data came from.
- One file unless ``external_data`` (weights in ``<name>.data`` beside the model). Every file is written
  atomically (staged, then renamed), the reference before the model that points to it; missing folders
  are made once the export has succeeded.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from onnx_decomp.io.model_io import save_model
from onnx_decomp.io.references import inside
from onnx_decomp.io.walk import iter_graphs
from onnx_decomp.stats.null_models import NULL_KEY_PREFIX, REFERENCE_KEY
from onnx_decomp.torch.binding import Binding, bind_initializers, float_initializers
from onnx_decomp.torch.init_record import InitRecord

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
DynamicShapes = Mapping[str, Mapping[int, Any]]  # input name -> {axis: dim name or torch.export.Dim}
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote: the model path, the initializer -> parameter bindings, the reference path."""

    path: Path
    bindings: Mapping[str, tuple[Binding, ...]]
    reference_path: Optional[Path] = None


def _as_tuple(example_inputs: Any) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _default_input_names(model: torch.nn.Module, count: int) -> list[str]:
    names = [p.name for p in inspect.signature(model.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names[:count] if len(names) >= count else [f"input_{i}" for i in range(count)]


def _dim_name(dim: Any) -> str:
    return dim if isinstance(dim, str) else dim.__name__


def _torch_export(model: torch.nn.Module, args: tuple, target: Path, dynamo: bool, dims: DynamicShapes,
                  input_names: Sequence[str], output_names: Optional[Sequence[str]],
                  opset_version: Optional[int], batch_outputs: bool) -> None:
    """``torch.onnx.export`` with ``dims`` as either exporter takes them; ``batch_outputs``: dim 0 of every
    output is ``batch`` too (TorchScript; dynamo infers the outputs' dims)."""
    options: dict[str, Any] = dict(input_names=list(input_names), output_names=output_names,
                                   opset_version=opset_version, dynamo=dynamo)
    if dynamo:
        options.update(external_data=True, verbose=False)
        if dims:
            named: dict[str, Any] = {}  # one torch.export.Dim per name: the first given, or made from the name
            for axes in dims.values():
                for d in axes.values():
                    named.setdefault(_dim_name(d), torch.export.Dim(d) if isinstance(d, str) else d)
            options["dynamic_shapes"] = tuple(
                {axis: named[_dim_name(d)] for axis, d in dims[name].items()} if name in dims else None
                for name in input_names)
    elif dims:
        axes = {name: {axis: _dim_name(d) for axis, d in named.items()} for name, named in dims.items()}
        outputs = {name: {0: "batch"} for name in output_names or []} if batch_outputs else {}
        options["dynamic_axes"] = {**axes, **outputs}
    torch.onnx.export(model, args, str(target), **options)


def _check_dynamic(model: onnx.ModelProto, dims: DynamicShapes) -> None:
    """A ValueError where the exporter fixed a dim asked to be symbolic."""
    for graph_input in model.graph.input:
        shape = graph_input.type.tensor_type.shape.dim
        for axis in dims.get(graph_input.name, {}):
            if axis < len(shape) and not shape[axis].dim_param:
                advice = "an example batch of 2 or more" if axis == 0 else "an example of size 2 or more there"
                raise ValueError(f"the exporter fixed dim {axis} of {graph_input.name!r} to "
                                 f"{shape[axis].dim_value}; export with {advice}")


def _reference_model(model: onnx.ModelProto, tensors: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A node-free model whose initializers (also its outputs) are ``tensors``."""
    initializers = [numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in tensors.items()]
    outputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers]
    graph = helper.make_graph([], "init_reference", [], outputs, initializers)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             producer_name="onnx_decomp.torch")


def _initial_tensors(bindings: Mapping[str, tuple[Binding, ...]], init: InitRecord) -> dict[str, np.ndarray]:
    tensors = {}
    for name, (first, *_) in bindings.items():
        value = init.tensors.get(first.parameter)
        if value is not None:
            tensors[name] = value.T if first.transposed else value
    return tensors


def _null_specs(bindings: Mapping[str, tuple[Binding, ...]], init: InitRecord) -> dict[str, str]:
    specs = {}
    for name, group in bindings.items():
        found = list(dict.fromkeys(init.specs[b.parameter] for b in group if b.parameter in init.specs))
        if len(found) > 1:
            logger.warning("initializer %s holds parameters with different recipes %s; writing %s",
                           name, found, found[0])
        if found:
            specs[name] = found[0]
    return specs


def _drop_stack_traces(model: onnx.ModelProto) -> None:
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)


def _set_metadata(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    kept = [p for p in model.metadata_props if not p.key.startswith(NULL_KEY_PREFIX) and p.key != REFERENCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def export(model: torch.nn.Module, example_inputs: Any, path: PathLike, init: Optional[InitRecord] = None, *,
           dynamo: bool = True, external_data: bool = False, dynamic_batch: bool = True,
           dynamic_shapes: Optional[DynamicShapes] = None, reference_path: Optional[PathLike] = None,
           input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
           opset_version: Optional[int] = None, metadata: Optional[Mapping[str, str]] = None) -> Exported:
    """Export ``model`` to ``path`` and record ``init`` (and ``metadata``) in its metadata (module rules)."""
    if reference_path is not None and init is None:
        raise ValueError("reference_path needs the InitRecord (init=record_init(model) before training)")
    path = Path(path)
    if reference_path is not None:  # the tool follows a recorded reference only inside the model's folder
        inside(path.parent, os.path.relpath(reference_path, path.parent), "reference_path")
    args = _as_tuple(example_inputs)
    names = list(input_names) if input_names is not None else _default_input_names(model, len(args))
    unknown = sorted(set(dynamic_shapes or {}) - set(names))
    if unknown:
        raise ValueError(f"dynamic_shapes names no input: {unknown} (the inputs are {names})")
    batch = {name: {0: "batch"} for name, a in zip(names, args) if torch.is_tensor(a)} if dynamic_batch else {}
    dims = dict(dynamic_shapes) if dynamic_shapes is not None else batch
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="onnx-decomp-export-") as folder:
            staged = Path(folder) / path.name
            _torch_export(model, args, staged, dynamo, dims, names, output_names, opset_version,
                          batch_outputs=dynamic_shapes is None)
            proto = onnx.load(str(staged))  # reads the .data file dynamo writes beside it
    finally:
        model.train(was_training)
    _check_dynamic(proto, dims)
    parameters = {name: p.detach().cpu().numpy() for name, p in model.named_parameters()}
    bindings = bind_initializers(float_initializers(proto), parameters)
    logger.info("%s: %d initializers bound to %d parameters", path, len(bindings),
                sum(len(group) for group in bindings.values()))
    metadata = dict(metadata or {})
    if init is not None:
        metadata.update({NULL_KEY_PREFIX + name: spec for name, spec in _null_specs(bindings, init).items()})
    if reference_path is not None:
        reference_path = Path(reference_path)
        reference_path.parent.mkdir(parents=True, exist_ok=True)
        save_model(_reference_model(proto, _initial_tensors(bindings, init)), reference_path,
                   external_data=external_data)
        metadata[REFERENCE_KEY] = Path(os.path.relpath(reference_path, path.parent)).as_posix()
    _drop_stack_traces(proto)
    _set_metadata(proto, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(proto, path, external_data=external_data)
    return Exported(path, bindings, reference_path)
