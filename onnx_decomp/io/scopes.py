"""Scopes: tensor names made unique across the whole model, so that a name means one tensor.

ONNX lets a subgraph (an If branch, a Loop body) define a tensor whose name an enclosing or sibling graph
also uses; inside that subgraph the local definition shadows the other. onnx-graphsurgeon resolves names
model-wide, so it would hand a branch another scope's weights. Rule: walking the graphs depth-first, every
definition (graph input, initializer, node output) whose name was already defined anywhere before is
renamed to ``<name>__<n>``, fresh in the model, and every reference in its scope (nested subgraphs
included, unless they shadow it again) follows. Names of the main graph never change, so the model's
interface is untouched; a model without shadowing is returned as it is, not copied.
"""

from __future__ import annotations

from typing import Iterator

import onnx


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _definitions(graph: onnx.GraphProto) -> list[str]:
    names = [value.name for value in graph.input] + [t.name for t in graph.initializer]
    names += [t.values.name for t in graph.sparse_initializer]
    return names + [name for node in graph.node for name in node.output if name]


def _shadows(graph: onnx.GraphProto, defined: set[str]) -> bool:
    """True when some subgraph below ``graph`` defines a name defined before it (``defined`` grows)."""
    for node in graph.node:
        for subgraph in _subgraphs(node):
            local = _definitions(subgraph)
            if defined & set(local) or len(set(local)) < len(local):
                return True
            defined |= set(local)
            if _shadows(subgraph, defined):
                return True
    return False


def _fresh(name: str, taken: set[str]) -> str:
    n = 1
    while f"{name}__{n}" in taken:
        n += 1
    return f"{name}__{n}"


def _rename(graph: onnx.GraphProto, visible: dict[str, str], taken: set[str], top: bool) -> None:
    """Rename, in place, the definitions of ``graph`` that clash with ``taken`` (none at the top), and
    every reference through ``visible`` (outer name -> its name now)."""
    mapping = dict(visible)
    for name in dict.fromkeys(_definitions(graph)):
        mapping[name] = name if top or name not in taken else _fresh(name, taken)
        taken.add(mapping[name])
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = mapping.get(sparse.values.name, sparse.values.name)
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
        for subgraph in _subgraphs(node):
            _rename(subgraph, mapping, taken, top=False)


def unique_scoped_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every shadowing definition renamed (module rule); ``model`` itself when none shadows."""
    if not _shadows(model.graph, set(_definitions(model.graph))):
        return model
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    _rename(renamed.graph, {}, set(), top=True)
    return renamed
