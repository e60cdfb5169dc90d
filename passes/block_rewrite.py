"""The block rewrite pass: every planned MatMul/Gemm is replaced by the first form that can execute its plan.

Rule: for each ``node name -> BlockPlan``, the form named for the node in ``chosen`` emits the replacement
(it must apply); other nodes ask the forms in order (``forms.DEFAULT_FORMS`` unless given) and the first whose
``check`` returns no reason emits it. The replacement writes the node's original output tensor; the node is
removed, and so is a Cast that fed it its weight once nothing else reads the Cast. Touched graphs are
topologically sorted. New names are unique in the model (``builder.NameTable``).
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import onnx_graphsurgeon as gs

from .builder import Builder, NameTable
from .forms import DEFAULT_FORMS, Form
from .infra import Pass, PassError, PassResult
from .ops import WeightedOp, all_graphs, find_weighted_ops
from .plan import BlockPlan

logger = logging.getLogger(__name__)

MIN_OPSET = 11


class BlockRewrite(Pass):
    __doc__ = __doc__

    def __init__(self, plans: Mapping[str, BlockPlan], forms: Sequence[Form] = DEFAULT_FORMS,
                 chosen: Optional[Mapping[str, Form]] = None):
        self.plans, self.forms, self.chosen = dict(plans), tuple(forms), dict(chosen or {})

    def requires(self, graph: gs.Graph) -> None:
        if self.plans and (graph.opset or 0) < MIN_OPSET:
            raise PassError(f"block rewrite needs opset >= {MIN_OPSET}, graph has {graph.opset}")

    def ensures(self, graph: gs.Graph) -> None:
        left = {op.node.name for op in find_weighted_ops(graph)[0]} & set(self.plans)
        if left:
            raise PassError(f"planned nodes still present after the rewrite: {sorted(left)}")

    def call(self, graph: gs.Graph) -> PassResult:
        shared: dict = {}
        names = NameTable(graph)
        ops = {op.node.name: op for op in find_weighted_ops(graph)[0]}
        missing = sorted(set(self.plans) - set(ops))
        if missing:
            raise PassError(f"plans name nodes that are not rewritable MatMul/Gemm: {missing}")
        touched = set()
        for name, plan in self.plans.items():
            op = ops[name]
            if (plan.n_out, plan.n_in) != op.shape:
                raise PassError(f"{name}: plan is {plan.n_out}x{plan.n_in}, weight is {op.shape}")
            form = self._form(op, plan)
            builder = Builder(op, shared, names)
            form.emit(builder, plan)
            op.graph.nodes.extend(builder.nodes)
            op.node.inputs.clear()
            op.node.outputs.clear()
            op.graph.nodes.remove(op.node)
            touched.add(id(op.graph))
            logger.debug("%s: %s form, %d branches, %d constant rows, %.1fx fewer MACs", name, form.name,
                         len(plan.branches), len(plan.constant_rows), plan.flop_reduction)
        casts = {id(ops[name].cast) for name in self.plans if ops[name].cast is not None}
        for subgraph in all_graphs(graph):
            dead = [n for n in subgraph.nodes if id(n) in casts and not n.outputs[0].outputs
                    and n.outputs[0] not in subgraph.outputs]
            for node in dead:
                node.inputs.clear()
                node.outputs.clear()
                subgraph.nodes.remove(node)
            if id(subgraph) in touched:
                subgraph.toposort(recurse_subgraphs=False)
        return PassResult(graph, bool(self.plans))

    def _form(self, op: WeightedOp, plan: BlockPlan) -> Form:
        reasons = []
        for form in [self.chosen[op.node.name]] if op.node.name in self.chosen else self.forms:
            reason = form.check(op, plan)
            if reason is None:
                return form
            reasons.append(f"{form.name}: {reason}")
        raise PassError(f"{op.node.name}: no rewrite form applies ({'; '.join(reasons)})")
