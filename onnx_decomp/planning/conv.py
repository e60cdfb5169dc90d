"""Conv plans in the rewrite: which planned Convs are rewritten, and in which form
(``onnx_decomp_passes.CONV_FORMS``; removed channels are ``RemoveUnits``'s, done before).

Rule, per Conv with a block or low-rank plan that saves multiply-accumulates: the forms that apply (a block
plan: ``conv_grouped`` when its blocks are equal, and ``conv_branches``; a low-rank plan: ``conv_lowrank``) are
timed in ONNX Runtime against the dense Conv (``cost.timing``), each as a one-node model at the node's input
shape (at every batch size of the gate), in the channel order folding gives it (``conv_folding``; the
permutations it cannot fold run in the form, so they are timed). The form with the best worst-case speedup is
taken if it is at least ``min_speedup`` (grouped Convs run far below their FLOP ratio on CPU, onnxruntime issue
9192: measured, not assumed); otherwise the Conv stays dense, with its masked weights, which the plan
describes exactly. With ``--gate flops`` or ``cost`` (no cost model for Conv), the first form that applies is
taken. The folding is decided again over the Convs rewritten.

``decompose``'s exact plans (``exact_conv_plans``): a channel pair is live when its kernel window holds a
nonzero; a Conv of one group whose live pairs fall into two or more components covering every channel is
planned as those blocks (lossless), then timed as above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

import numpy as np
import onnx

from onnx_decomp.config import GateConfig, SessionConfig
from onnx_decomp.cost.model_stats import counted_shapes
from onnx_decomp.cost.timing import median_speedup
from onnx_decomp.io.graph import export_graph, import_graph
from onnx_decomp.io.shapes import InputShapes, InputSpec, input_specs
from onnx_decomp.runtime.sessions import make_session, random_inputs, run_session
from onnx_decomp_passes import (CONV, CONV_FORMS, BlockPlan, Branch, ConvRewrite, LowRankPlan, Plan, Site,
                                WeightedOp, conv_folding, find_weighted_ops, one_node_graph, plan_from_support)


@dataclass
class ConvDecision:
    """What became of one planned Conv: its form (None: kept dense), each form's worst measured speedup."""

    site: Site
    form: Optional[str]
    speedups: dict[str, float]
    reason: str = ""

    def line(self) -> str:
        measured = ", ".join(f"{name} {value:.2f}x" for name, value in self.speedups.items())
        verdict = f"rewritten as {self.form}" if self.form else f"kept dense ({self.reason})"
        return f"Conv {self.site.node}: {verdict}" + (f"; measured {measured}" if measured else "")


def _speedup(op: WeightedOp, plan: Plan, form: str, x_shape: list, root, session: SessionConfig) -> float:
    """Dense time / time of ``op`` alone rewritten in ``form`` at input ``x_shape`` (median of interleaved runs)."""
    dtype = np.dtype(op.node.inputs[0].dtype or op.weight.dtype)
    dense, rewritten = (one_node_graph(op, x_shape, dtype, root) for _ in range(2))
    ConvRewrite({op.site: plan}, {op.site: form})(rewritten)
    sessions = [make_session(export_graph(g), replace(session, spin=False)) for g in (dense, rewritten)]
    feed = random_inputs([InputSpec("x", dtype, tuple(x_shape))], np.random.default_rng(0))
    for one in sessions:
        run_session(one, feed, what=f"Conv {op.node.name} alone at input shape {x_shape}")
    return median_speedup(*sessions, feed)


def rewrite_convs(model: onnx.ModelProto, plans: Mapping[Site, Plan], input_shapes: InputShapes, gate: GateConfig,
                  session: SessionConfig) -> tuple[onnx.ModelProto, list[ConvDecision]]:
    """``model`` with its planned Convs rewritten by the module rule, and a decision per planned Conv."""
    if not plans:  # nothing planned: the graph is not imported (that copies every weight)
        return model, []
    graph = import_graph(model)
    convs = {op.site: op for op in find_weighted_ops(graph, CONV)[0]}
    planned = {site: plan for site, plan in plans.items()
               if site in convs and isinstance(plan, (BlockPlan, LowRankPlan)) and plan.flop_reduction > 1}
    if not planned:
        return model, []
    folded = conv_folding(graph, planned).plans
    shapes = counted_shapes(model, input_specs(model, input_shapes))
    decisions, chosen = [], {}
    for site, plan in planned.items():
        op = convs[site]
        forms = [name for name, form in CONV_FORMS.items() if form.applies(op, folded[site]) is None]
        if not forms:
            decisions.append(ConvDecision(site, None, {}, "no Conv form applies"))
            continue
        if gate.kind != "time":
            chosen[site] = forms[0]
            decisions.append(ConvDecision(site, forms[0], {}))
            continue
        x_shape = list(shapes[op.node.inputs[0].name])
        speedups = {form: min(_speedup(op, folded[site], form, [batch, *x_shape[1:]], graph, session)
                              for batch in gate.batches or [x_shape[0]]) for form in forms}
        best = max(speedups, key=speedups.get)
        fast = speedups[best] >= gate.min_speedup
        if fast:
            chosen[site] = best
        decisions.append(ConvDecision(site, best if fast else None, speedups,
                                      "" if fast else f"fastest {speedups[best]:.2f}x < {gate.min_speedup:g}x"))
    if chosen:
        ConvRewrite({site: planned[site] for site in chosen}, chosen)(graph)
        model = export_graph(graph, like=model)
    return model, decisions


def exact_conv_plans(model: onnx.ModelProto) -> dict[Site, BlockPlan]:
    """The block plan of each Conv whose zeros split it into channel blocks (module rule), on its unrolled
    kernel."""
    if not any(node.op_type == "Conv" for node in model.graph.node):
        return {}
    plans = {}
    for op in find_weighted_ops(import_graph(model), CONV)[0]:
        if op.groups != 1:
            continue
        pairs = plan_from_support((op.matrix().reshape(op.shape[0], -1, op.window) != 0).any(-1))
        if len(pairs.branches) > 1 and not len(pairs.constant_rows) and not len(pairs.unused_cols):
            plans[op.site] = BlockPlan(*op.shape, tuple(Branch(branch.rows, op.input_columns(branch.cols))
                                                        for branch in pairs.branches))
    return plans
