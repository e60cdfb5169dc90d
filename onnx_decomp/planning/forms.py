"""The rewrite form of each candidate: the one the cost model estimates fastest, or with ``tune`` the one ONNX
Runtime measures fastest.

Rule: a candidate is judged in the feature order permutation folding gives it (``plan_folding`` over every
candidate that passes the MAC gate, decided once: the rewrite applies this folding, restricted to the spaces
of the nodes it rewrites, so what runs is what was judged), at every batch size the gate names
(``GateConfig.batches``: the first dim of every input whose first dim is symbolic; none named: the input
shapes as given), with shapes inferred through computed shapes (data propagation). A side where the node
and its neighbour have matching blocks in order (``chain_links``) is credited with what a chain saves there
(the form's ``chain_saves``), assuming the neighbour takes the same form. Every form of
``GateConfig.forms`` (for a block plan; every registered form of its kind for another plan) whose check passes is
estimated at every batch size (``cost.estimate``); the chosen form
has the best worst-case estimated speedup. With ``tune`` every such form is also timed (``cost.timing``) and
the best worst-case measured speedup wins. With the time gate the chosen form is timed at every batch size and
``Candidate.speedup`` is the worst of them: the gate then never rewrites a node into something slower than
dense at a batch size the user named."""

from __future__ import annotations

import gc
from dataclasses import replace
from typing import Optional

import numpy as np

from onnx_decomp.config import GateConfig, SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.estimate import estimate_speedup
from onnx_decomp.cost.timing import measure_speedup
from onnx_decomp.decisions import Candidate, FormCost
from onnx_decomp.cost.model_stats import counted_shapes
from onnx_decomp.io.shapes import InputSpec
from onnx_decomp_passes import FORMS, BlockPlan, Site, plan_folding
from onnx_decomp_passes.forms.blocks import block_layout

COLLECT_ELEMENTS = 2 ** 20  # a weight this large has its one-node graphs collected at once (their copies)


def batch_specs(ctx: ModelContext, batch: int) -> list[InputSpec]:
    """The run's input specs with the first dim set to ``batch`` where the model leaves it symbolic."""
    symbolic = {value.name for value in ctx.proto.graph.input
                if value.type.tensor_type.shape.dim and
                not value.type.tensor_type.shape.dim[0].HasField("dim_value")}
    return [replace(spec, shape=(batch, *spec.shape[1:])) if spec.name in symbolic and spec.shape else spec
            for spec in ctx.specs]


def chain_links(plans: dict[Site, BlockPlan], links: dict[Site, Site]) -> dict[Site, tuple[bool, bool]]:
    """Node -> (input linked, output linked): the sides where a producer and its one consumer have matching
    blocks in order after folding, so that block forms stay in block layout between them (``KeepBlockLayout``)."""
    linked: dict[Site, tuple[bool, bool]] = {}
    for consumer, producer in links.items():
        out, into = block_layout(plans[producer]), block_layout(plans[consumer])
        if isinstance(out, str) or isinstance(into, str):
            continue
        if out.out_order and into.in_order and (out.k, out.b_out) == (into.k, into.b_in):
            linked[producer] = (linked.get(producer, (False, False))[0], True)
            linked[consumer] = (True, linked.get(consumer, (False, False))[1])
    return linked


class FormChooser:
    """Chooses the form of each candidate of one model (module rule)."""

    def __init__(self, ctx: ModelContext, gate: GateConfig, session: SessionConfig, candidates: list[Candidate]):
        self.ctx, self.gate, self.session = ctx, gate, session
        eligible = {c.op.site: c.plan for c in candidates
                    if isinstance(c.plan, BlockPlan) and c.plan.flop_reduction >= gate.min_flop_reduction}
        self.folding = plan_folding(ctx.graph, eligible)
        self.linked = chain_links(self.folding.plans, self.folding.links)
        specs = {b: batch_specs(ctx, b) for b in gate.batches} if gate.batches else {None: ctx.specs}
        self.shapes = {b: counted_shapes(ctx.proto, s, base_dir=ctx.base_dir) for b, s in specs.items()}

    def _x_shapes(self, candidate: Candidate) -> Optional[dict]:
        """Batch size -> the node's input shape, or None when a shape is unresolved."""
        name = candidate.op.node.inputs[0].name
        shapes = {batch: shapes.get(name) for batch, shapes in self.shapes.items()}
        return None if any(not s or None in s for s in shapes.values()) else shapes

    def __call__(self, candidate: Candidate) -> Candidate:
        op = candidate.op
        candidate = replace(candidate, folded=self.folding.plans.get(op.site, candidate.plan))
        names = self.gate.forms if isinstance(candidate.plan, BlockPlan) else FORMS  # other kinds: their own forms
        forms = [FORMS[name] for name in names if FORMS[name].applies(op, candidate.folded) is None]
        if not forms:
            return candidate
        x_shapes = self._x_shapes(candidate)
        if x_shapes is None:  # nothing to estimate at: the first form that applies
            return replace(candidate, form=forms[0].name)
        root = self.ctx.graph
        linked = self.linked.get(op.site, (False, False))
        costs = [FormCost(form.name, batch, estimate_speedup(candidate, form, shape, root, linked),
                          measure_speedup(candidate, form, shape, root, self.session) if self.gate.tune else None)
                 for form in forms for batch, shape in x_shapes.items()]

        def worst(form) -> float:
            return min(c.measured if self.gate.tune else c.estimated for c in costs if c.form == form.name)

        chosen = max(forms, key=worst)
        if self.gate.kind == "time" and not self.gate.tune:
            costs = [replace(c, measured=measure_speedup(candidate, chosen, x_shapes[c.batch], root, self.session))
                     if c.form == chosen.name else c for c in costs]
        measured = [c.measured for c in costs if c.form == chosen.name and c.measured is not None]
        if np.prod(op.shape) >= COLLECT_ELEMENTS:
            gc.collect()  # the one-node graphs are reference cycles that hold copies of the weight
        return replace(candidate, form=chosen.name, costs=tuple(costs),
                       speedup=min(measured) if measured else None)
