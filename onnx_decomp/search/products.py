"""Activation products: the MatMuls that multiply two activations (attention's ``Q K^T`` and ``A V``), and
what they cost, so that a structure removing them (whole heads) is weighed against one removing weight MACs.

Rules:
- A product is a MatMul of the main graph both of whose operands depend on a graph input. It costs
  ``prod(output shape) * K`` multiply-accumulates per inference (K: the contracted dim) at the run's input
  shapes (``Network.shapes``, the same shapes the layers' vectors are counted at), so it grows with the
  sequence length where a weight's MACs per vector do not. A product whose shapes were not inferred counts
  nothing.
- Its sources are the layers whose results reach its operands, walking back through any node but weighted
  ops (where the walk stops) and ``Shape``/``Size`` (they read shapes, not values).
- With cuts in force, its MACs scale with the smallest share of output features its sources still compute
  (``Cut.outputs``): removing heads removes them from every projection of a block and the products run per
  head, so ``H'`` of ``H`` heads keep ``H'/H`` of them; every other cut computes all of its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from onnx_decomp.context import ModelContext
from onnx_decomp_passes import Site

if TYPE_CHECKING:  # cuts and layers are asked for their widths only
    from onnx_decomp.search.families import Cut
    from onnx_decomp.search.network import Layer

SHAPE_OPS = ("Shape", "Size")


@dataclass(frozen=True)
class Product:
    node: str
    macs: int  # per inference, dense
    sources: tuple[Site, ...]

    def kept(self, cuts: Mapping[Site, "Cut"], layers: Mapping[Site, "Layer"]) -> int:
        """The MACs left with ``cuts`` in force (module rule)."""
        share = min((cuts[s].outputs(layers[s]) / layers[s].shape[0] for s in self.sources if s in cuts), default=1.0)
        return round(self.macs * share)


def find_products(ctx: ModelContext, layers: list["Layer"], shapes: Mapping[str, list]) -> list[Product]:
    """Every product of the module rules at ``shapes``, in graph order."""
    graph = ctx.graph
    variable = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        if any(id(t) in variable for t in node.inputs):
            variable.update(id(t) for t in node.outputs)
    weighted = {id(op.node) for op in ctx.ops}
    sites = {id(layer.op.node): layer.site for layer in layers}
    products = []
    for node in graph.nodes:
        if node.op != "MatMul" or id(node) in weighted or not all(id(t) in variable for t in node.inputs[:2]):
            continue
        output, first = shapes.get(node.outputs[0].name), shapes.get(node.inputs[0].name)
        if output and first and None not in output and None not in first:
            products.append(Product(node.name, int(np.prod(output)) * first[-1], _sources(node, weighted, sites)))
    return products


def _sources(node, weighted: set[int], sites: Mapping[int, Site]) -> tuple[Site, ...]:
    found, stack, seen = {}, list(node.inputs[:2]), set()
    while stack:
        tensor = stack.pop()
        producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        if id(producer) in weighted:
            if id(producer) in sites:
                found[sites[id(producer)]] = None
        elif producer.op not in SHAPE_OPS:
            stack.extend(producer.inputs)
    return tuple(found)
