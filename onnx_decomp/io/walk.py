"""Walking a model: every graph (subgraphs at any depth) and every tensor it holds; a copy of a model whose
tensors are replaced on the way."""

from __future__ import annotations

from collections.abc import MutableSequence
from typing import Callable, Collection, Iterator, Optional, TypeVar

import onnx
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
TENSOR_HOLDERS = ("onnx.ModelProto", "onnx.GraphProto", "onnx.NodeProto", "onnx.AttributeProto")  # where
# ``iter_tensors`` looks: the model's graph, a graph's initializers and nodes, a node's attributes and theirs


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_graphs(subgraph)


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and node-attribute tensor (a Constant's value, tensor lists) in ``graph`` and its
    subgraphs."""
    for one in iter_graphs(graph):
        yield from one.initializer
        for node in one.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def copied(message: M, tensor: Optional[Callable[[onnx.TensorProto], onnx.TensorProto]] = None,
           leave_out: Collection[str] = ()) -> M:
    """A copy of ``message`` without its fields ``leave_out``, each tensor ``iter_tensors`` would find in it
    replaced by ``tensor(t)`` where given (the graphs, nodes and attributes that hold them copied by the same
    rule); ``message`` is left untouched, so a large tensor that ``tensor`` leaves out is never copied."""
    result = type(message)()
    for field, value in message.ListFields():
        if field.name in leave_out:
            continue
        kind = field.message_type.full_name if field.message_type else None
        convert = (tensor if kind == "onnx.TensorProto" else
                   (lambda held: copied(held, tensor)) if kind in TENSOR_HOLDERS and tensor else None)
        target = getattr(result, field.name)
        if isinstance(value, MutableSequence):
            target.extend(map(convert, value) if convert else value)
        elif kind:
            target.CopyFrom(convert(value) if convert else value)
        else:
            setattr(result, field.name, value)
    return result
