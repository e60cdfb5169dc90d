"""The cost gate: which candidates are rewritten.

Rule, per node: a candidate is kept dense unless its plan does fewer multiply-accumulates than the dense
weight, and a block plan at least ``min_flop_reduction`` times fewer (default 2: below that the extra nodes
and permutations cost more than they save, tools/bench_forms.py; a low-rank plan adds one node, and the
timing or cost gate judges it). Its form is chosen by ``planning.forms``. With
``kind="time"`` (default) it is rewritten only when ONNX Runtime measures the node's rewrite in that form at
least ``min_speedup`` times faster at every batch size named (or the model's input shapes) (``cost.timing``;
default 1.1, above the run-to-run noise of a shared machine); ``kind="cost"`` asks the same of the cost
model's estimate (``cost.estimate``: deterministic, no timing); ``kind="flops"`` stops after the count:
deterministic, but blind to runtime costs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from onnx_decomp.config import GateConfig, SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.decisions import Action, Candidate, Decision, Planning
from onnx_decomp.planning.forms import FormChooser
from onnx_decomp.planning.support import Masks, SupportOrPlan, as_plan
from onnx_decomp_passes import MIN_OPSET, BlockPlan, WeightedOp


def decide(candidate: Candidate, gate: GateConfig, choose: Callable[[Candidate], Candidate]) -> Decision:
    """The module rule for one candidate; ``choose`` picks its form (``planning.forms``) and, with
    ``kind="time"``, measures it."""
    plan = candidate.plan
    needed = gate.min_flop_reduction if isinstance(plan, BlockPlan) else 1.0
    if plan.flop_reduction <= 1.0 or plan.flop_reduction < needed:
        dense = isinstance(plan, BlockPlan) and len(plan.branches) == 1 and plan.flop_reduction == 1.0
        reason = "dense: one block" if dense else f"{plan.flop_reduction:.2f}x fewer MACs < {needed:g}x"
        return Decision(candidate.op, Action.KEEP, reason, candidate)
    candidate = choose(candidate)
    if gate.kind == "flops":
        return Decision(candidate.op, Action.REWRITE, "", candidate)
    speedup, verb = (candidate.speedup, "measured") if gate.kind == "time" else (candidate.estimated, "estimated")
    if speedup is None:
        return Decision(candidate.op, Action.KEEP, f"not {verb}: input shape unknown (use --input-shape)",
                        candidate)
    if speedup < gate.min_speedup:
        return Decision(candidate.op, Action.KEEP, f"{verb} {speedup:.2f}x < {gate.min_speedup:g}x", candidate)
    return Decision(candidate.op, Action.REWRITE, "", candidate)


def plan_nodes(ctx: ModelContext, gate: GateConfig, session: SessionConfig, masks: Masks = None) -> Planning:
    """A decision for every MatMul/Gemm with a constant operand: skipped ones with their reason, the others
    judged on the plan of their support (``masks[site]``; else the nonzero pattern); with the folding they were
    judged under."""
    decisions = [Decision(s, Action.SKIP, s.reason) for s in ctx.skipped]
    candidates: dict[tuple, Candidate] = {}
    ops = []
    for op in ctx.ops:
        if (ctx.graph.opset or 0) < MIN_OPSET:
            decisions.append(Decision(op, Action.SKIP, f"opset {ctx.graph.opset} < {MIN_OPSET}"))
            continue
        key = (id(op.weight), op.layout)  # the tensor itself: one name may mean different tensors
        if key not in candidates:
            candidates[key] = _candidate(op, None if masks is None else masks.get(op.site), ctx.notes)
        ops.append(replace(candidates[key], op=op))
    choose = FormChooser(ctx, gate, session, ops)
    for candidate in tqdm(ops, desc="planning", unit="node", disable=None, leave=False):
        decisions.append(decide(candidate, gate, choose))
    return Planning(decisions, choose.folding)


def _candidate(op: WeightedOp, mask: Optional[SupportOrPlan], notes: list[str]) -> Candidate:
    """The plan of ``mask``, a Boolean support or the plan itself (None: the nonzero pattern; a weight the
    analysis left out has no mask), from one read of the weight."""
    matrix = op.matrix()
    nonzero = matrix != 0
    if not np.isfinite(matrix).all():
        notes.append(f"weight {op.weight.name} holds NaN or Inf values (kept where they are)")
    return Candidate(op, as_plan(nonzero if mask is None else mask), float(nonzero.mean()))
