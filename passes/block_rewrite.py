"""The rewrite pass: every planned weighted op is replaced by the form chosen for it, or the first form that
can execute its plan (block plans and low-rank plans; sliced weights are ``remove_units``'s).

Rule: for each ``Site -> BlockPlan`` of a node of ``op_types`` (MatMul/Gemm by default), the form named for the site in ``chosen`` emits the replacement (it must
apply); other sites ask ``forms`` in order (the branch form, which applies to every plan, unless given) and
the first whose ``check`` returns no reason emits it. The replacement writes the node's original output
tensor; the node is removed, and so is a Cast that fed it its weight once nothing else reads the Cast.
Touched graphs are topologically sorted. New names are unique in the model (``builder.NameTable``). The
pass's artifact is an ``Emission`` per site: the form, the nodes emitted with their metadata, and where a
block form's activations enter and leave block layout (what ``KeepBlockLayout`` reads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import onnx_graphsurgeon as gs

from .builder import BlockBoundary, Builder, NameTable
from .forms import FORMS, Form
from .infra import Pass, PassError, PassResult
from .ops import LINEAR, WeightedOp, all_graphs, find_weighted_ops
from .plan import Plan
from .site import Site

logger = logging.getLogger(__name__)

MIN_OPSET = 11


@dataclass
class Emission:
    """What replaced one site."""

    form: str
    nodes: list[gs.Node]
    metadata: dict[str, dict[str, str]]  # node name -> metadata_props
    entry: Optional[BlockBoundary] = None
    exit: Optional[BlockBoundary] = None


class BlockRewrite(Pass):
    __doc__ = __doc__

    def __init__(self, plans: Mapping[Site, Plan], forms: Sequence[Form] = (FORMS["branches"], FORMS["lowrank"]),
                 chosen: Optional[Mapping[Site, Form]] = None, op_types: Sequence[str] = LINEAR):
        self.plans, self.forms, self.chosen = dict(plans), tuple(forms), dict(chosen or {})
        self.op_types = tuple(op_types)

    def requires(self, graph: gs.Graph) -> None:
        if self.plans and (graph.opset or 0) < MIN_OPSET:
            raise PassError(f"block rewrite needs opset >= {MIN_OPSET}, graph has {graph.opset}")

    def ensures(self, graph: gs.Graph) -> None:
        left = {op.site for op in find_weighted_ops(graph, self.op_types)[0]} & set(self.plans)
        if left:
            raise PassError(f"planned nodes still present after the rewrite: {sorted(s.node for s in left)}")

    def call(self, graph: gs.Graph) -> PassResult[dict[Site, Emission]]:
        shared: dict = {}
        names = NameTable(graph)
        ops = {op.site: op for op in find_weighted_ops(graph, self.op_types)[0]}
        missing = sorted(set(self.plans) - set(ops))
        if missing:
            raise PassError(f"plans name nodes that are not rewritable {'/'.join(self.op_types)}: "
                            f"{[s.node for s in missing]}")
        touched, emitted = set(), {}
        for site, plan in self.plans.items():
            op = ops[site]
            if (plan.n_out, plan.n_in) != op.shape:
                raise PassError(f"{site.node}: plan is {plan.n_out}x{plan.n_in}, weight is {op.shape}")
            form = self._form(op, plan)
            builder = Builder(op, shared, names, site)
            form.emit(builder, plan)
            op.graph.nodes.extend(builder.nodes)
            op.node.inputs.clear()
            op.node.outputs.clear()
            op.graph.nodes.remove(op.node)
            touched.add(id(op.graph))
            emitted[site] = Emission(form.name, builder.nodes, builder.metadata, builder.entry, builder.exit)
            logger.debug("%s: %s form, %.1fx fewer MACs", site.node, form.name, plan.flop_reduction)
        casts = {id(ops[site].cast) for site in self.plans if ops[site].cast is not None}
        for subgraph in all_graphs(graph):
            dead = [n for n in subgraph.nodes if id(n) in casts and not n.outputs[0].outputs
                    and n.outputs[0] not in subgraph.outputs]
            for node in dead:
                node.inputs.clear()
                node.outputs.clear()
                subgraph.nodes.remove(node)
            if id(subgraph) in touched:
                subgraph.toposort(recurse_subgraphs=False)
        return PassResult(graph, bool(self.plans), emitted)

    def _form(self, op: WeightedOp, plan: Plan) -> Form:
        reasons = []
        for form in [self.chosen[op.site]] if op.site in self.chosen else self.forms:
            reason = form.applies(op, plan)
            if reason is None:
                return form
            reasons.append(f"{form.name}: {reason}")
        raise PassError(f"{op.node.name}: no rewrite form applies ({'; '.join(reasons)})")
