"""Give a PyTorch module the structure annealing found, so that it computes what the rewritten ONNX model does.

    model, report = onnx_decomp.anneal("model.onnx", calib)       # model.onnx exported from `module`
    structure = apply_structure(module, report, onnx_model="model.onnx")
    finetune_under_mask(module, loss_fn, loader, mask=structure)  # optimizer made afterwards
    export(module, (x,), "structured.onnx")                       # the rewrite's shapes

Rules:
- ``structure``: an ``AnnealReport`` (its ``plans`` and its masked, refitted dense model ``masked``) or the
  plans (``Site`` -> plan) with ``masked`` given. ``onnx_model``: the model exported from the module's current
  weights (default ``masked``: the module already holds the annealed weights). Its initializers are bound to
  parameters by value (``binding``), and every bound initializer's value in ``masked`` is loaded into its
  parameters first (``load_initializers``): the annealed weights and refitted biases.
- ``BlockPlan``: a block mask on the bound parameters (``apply_block_mask``: zeroed now, zero gradients).
- ``LowRankPlan``: the ``nn.Linear`` becomes ``Sequential(Linear(in, r, bias=False), Linear(r, out))`` holding
  the truncated SVD factors of its annealed weight, the ones the ONNX rewrite uses, the bias on the second
  (``low_rank.factorize``).
- ``SlicePlan``: the ``nn.Linear`` keeps its ``rows`` outputs and ``cols`` inputs, and per-feature parameters
  between a producer and its consumers are sliced with it (``units``).
- Every planned weight must be bound to a parameter, and no two planned sites to one parameter. A low-rank or
  sliced site must be one node reading its weight, bound to one parameter, the ``weight`` of an ``nn.Linear``
  holding it as ``[out, in]``. Anything else is refused with a ``ValueError`` naming the site, before the
  module is changed.
- Replaced and sliced layers have new parameters: make the optimizer afterwards.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import torch
from torch import nn

from onnx_decomp.io.graph import import_graph
from onnx_decomp.io.model_io import ModelLike, load_model
from onnx_decomp.report.anneal import AnnealReport
from onnx_decomp.torch.binding import Binding, bind_initializers, float_initializers, load_initializers
from onnx_decomp.torch.block_mask import BlockMask, apply_block_mask, parameter_masks
from onnx_decomp.torch.low_rank import factorize
from onnx_decomp.torch.units import plan_unit_removal
from onnx_decomp_passes import BlockPlan, Layout, LowRankPlan, Plan, SlicePlan, Site, WeightedOp, find_weighted_ops

logger = logging.getLogger(__name__)


@dataclass
class AppliedStructure:
    """What ``apply_structure`` did: the block masks in force, the Linears factorised (path -> rank) and the
    Linears sliced (path -> ``(out_features, in_features)`` now)."""

    mask: BlockMask
    factorised: dict[str, int] = field(default_factory=dict)
    sliced: dict[str, tuple[int, int]] = field(default_factory=dict)

    def enforce(self) -> None:
        """Set every masked entry to exactly zero again (``BlockMask.enforce``)."""
        self.mask.enforce()


def _linear(site: Site, op: WeightedOp, group: tuple[Binding, ...], modules: Mapping[str, nn.Module]) -> str:
    """The path of the ``nn.Linear`` whose weight the site reads (module rules), or a ValueError."""
    if len(group) > 1:
        raise ValueError(f"{site}: its weight holds {len(group)} parameters "
                         f"({', '.join(b.parameter for b in group)}); cannot tell which layer to change")
    path, _, leaf = group[0].parameter.rpartition(".")
    if leaf != "weight" or not isinstance(modules.get(path), nn.Linear):
        raise ValueError(f"{site}: its weight is {group[0].parameter}, not the weight of an nn.Linear")
    if group[0].layout(op.layout) is not Layout.OUT_IN:
        raise ValueError(f"{site}: {group[0].parameter} holds the transpose of the node's [out, in] weight")
    if len(op.weight.outputs) > 1:
        raise ValueError(f"{site}: its weight is read by {len(op.weight.outputs)} nodes (a Linear shared by "
                         "several sites)")
    return path


def apply_structure(model: nn.Module, structure: Union[AnnealReport, Mapping[Site, Plan]],
                    masked: Optional[ModelLike] = None, *, onnx_model: Optional[ModelLike] = None) -> AppliedStructure:
    """Change ``model`` in place to compute what the rewrite of ``structure`` computes (module rules)."""
    plans = structure.plans if isinstance(structure, AnnealReport) else structure
    masked = structure.masked if masked is None and isinstance(structure, AnnealReport) else masked
    if masked is None:
        raise ValueError("apply_structure needs the annealed weights: an AnnealReport or masked=")
    masked = load_model(masked)
    parameters = dict(model.named_parameters())
    values = {name: p.detach().cpu().numpy() for name, p in parameters.items()}
    bindings = bind_initializers(float_initializers(load_model(onnx_model) if onnx_model is not None else masked),
                                 values)
    ops = {op.site: op for op in find_weighted_ops(import_graph(masked))[0]}
    unknown = [site for site in plans if site not in ops]
    if unknown:
        raise ValueError(f"{unknown[0]}: no MatMul/Gemm of the masked model")
    kinds = [site for site, plan in plans.items() if not isinstance(plan, (BlockPlan, LowRankPlan, SlicePlan))]
    if kinds:
        raise ValueError(f"{kinds[0]}: a {type(plans[kinds[0]]).__name__} has no PyTorch counterpart here")
    unbound = [site for site in plans if not bindings.get(site.weight)]
    if unbound:
        raise ValueError(f"{unbound[0]}: its weight is bound to no parameter (onnx_model= must be the model "
                         "exported from the module's current weights)")
    owners = Counter(b.parameter for site in plans for b in bindings.get(site.weight, ()))
    shared = [name for name, count in owners.items() if count > 1]
    if shared:
        raise ValueError(f"{shared[0]} is bound to several planned sites")
    modules = dict(model.named_modules())
    layers = {site: _linear(site, ops[site], bindings[site.weight], modules)
              for site, plan in plans.items() if isinstance(plan, (LowRankPlan, SlicePlan))}
    blocks = {site: plan for site, plan in plans.items() if isinstance(plan, BlockPlan)}
    masks = parameter_masks(blocks, parameters, {site.weight: ops[site].layout for site in blocks}, bindings)
    removal = plan_unit_removal({site: (layers[site], plan) for site, plan in plans.items()
                                 if isinstance(plan, SlicePlan)}, ops, bindings)
    load_initializers(model, float_initializers(masked), bindings)
    applied = AppliedStructure(apply_block_mask(model, masks))
    applied.factorised = {layers[site]: plan.rank for site, plan in plans.items() if isinstance(plan, LowRankPlan)}
    factorize(model, applied.factorised)
    removal.apply(model)
    modules = dict(model.named_modules())
    applied.sliced = {path: (modules[path].out_features, modules[path].in_features) for path in removal.layers}
    logger.info("structure applied: %d weights masked, %d factorised, %d sliced", len(masks),
                len(applied.factorised), len(applied.sliced))
    return applied
