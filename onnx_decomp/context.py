"""The model context: everything a run derives from its input model, built once and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import onnx
import onnx.inliner

from onnx_decomp.io.graph import import_graph, overridable_initializers
from onnx_decomp.io.model_io import ModelLike, load_model, model_label
from onnx_decomp.io.scopes import unique_scoped_names
from onnx_decomp.io.shapes import InputShapes, InputSpec, concrete_shapes, input_specs
from onnx_decomp_passes import WeightedOp, Skipped, find_weighted_ops

if TYPE_CHECKING:  # the graph is made and exported by io.graph only
    import onnx_graphsurgeon as gs


@dataclass
class ModelContext:
    """One loaded model: the proto as loaded (never modified), the file it came from, the normalised graph
    (``io.graph.import_graph``; a rewrite consumes it), the concrete input shapes of this run, every tensor's
    shape at them (computed on first use), the MatMul/Gemm ops with a constant weight and those skipped
    (with a weight that is an overridable graph input among them)."""

    proto: onnx.ModelProto
    label: str
    source: Optional[Path]  # the file; its external data stays there and is read when used
    graph: "gs.Graph"
    specs: list[InputSpec]
    ops: list[WeightedOp]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, model: ModelLike, input_shapes: InputShapes = None,
             inline_functions: bool = False) -> "ModelContext":
        """Load and check ``model`` (a path or a ModelProto), resolve input shapes, normalise the graph;
        with ``inline_functions``, model-local functions are inlined first (``onnx.inliner``)."""
        source = None if isinstance(model, onnx.ModelProto) else Path(model)
        proto = load_model(model, external_data=False)
        if inline_functions and proto.functions:
            proto = onnx.inliner.inline_local_functions(proto)
        notes: list[str] = []
        specs = input_specs(proto, input_shapes, notes)
        graph = import_graph(proto, None if source is None else source.parent)
        ops, skipped = find_weighted_ops(graph)
        overridable = set(overridable_initializers(proto))
        skipped += [Skipped(node.name, node.op, graph.name, "weight is a graph input with a default value "
                            "(overridable at run time)")
                    for node in graph.nodes if node.op in ("MatMul", "Gemm") and len(node.inputs) > 1
                    and node.inputs[1].name in overridable]
        return cls(proto, model_label(model), source, graph, specs, ops, skipped, notes)

    @property
    def base_dir(self) -> Optional[Path]:
        """Where the proto's external-data references point (the model file's folder)."""
        return None if self.source is None else self.source.parent

    @cached_property
    def scoped(self) -> onnx.ModelProto:
        """The proto with tensor names unique across scopes, as the graph has them (``io.scopes``)."""
        return unique_scoped_names(self.proto)

    @cached_property
    def shapes(self) -> dict[str, list]:
        """Every tensor's shape at ``specs`` by its name in the graph (``io.shapes.concrete_shapes``)."""
        return concrete_shapes(self.scoped, self.specs)
