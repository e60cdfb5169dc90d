"""Hidden units removed whole from a PyTorch module, as ``RemoveUnits`` removes them from the ONNX graph.

Rules:
- A ``SlicePlan`` on an ``nn.Linear`` keeps the output ``rows`` (weight rows and bias) and the input ``cols``
  (weight columns) in place: the module stays, its ``out_features``/``in_features`` follow, its parameters
  are new tensors.
- A producer (``rows`` given) is followed in the ONNX graph the plans were made on: its feature space
  (``feature_space``: per-feature nodes up to the MatMul/Gemm nodes reading it) must be one ``RemoveUnits``
  can relabel (a LayerNorm, Reshape or residual in between is not per-feature and is refused with the reason),
  and every consumer must keep exactly the columns ``rows``; a ``cols`` that no producer removes is refused.
- The space's per-feature constants (``[.., n]`` vectors added or multiplied on the way) are the producer's
  own bias, or bound to exactly one parameter, which is sliced along its last axis to ``rows`` too; a constant
  bound to no parameter (a buffer, a literal) or to several is refused. Elementwise activations need nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import torch
from torch import nn

from onnx_decomp.torch.binding import Binding
from onnx_decomp_passes import SlicePlan, Site, WeightedOp
from onnx_decomp_passes.fold_permutation import feature_space

logger = logging.getLogger(__name__)


@dataclass
class UnitRemoval:
    """What to slice: Linear path -> (rows kept or None, columns kept or None); per-feature parameter ->
    entries kept along its last axis."""

    layers: dict[str, tuple[Optional[np.ndarray], Optional[np.ndarray]]] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for path, (rows, cols) in self.layers.items():
            layer = modules[path]
            weight = layer.weight
            if rows is not None:
                weight = weight[torch.tensor(rows, device=weight.device)]
                if layer.bias is not None:
                    layer.bias = nn.Parameter(layer.bias[torch.tensor(rows, device=weight.device)].clone())
            if cols is not None:
                weight = weight[:, torch.tensor(cols, device=weight.device)]
            layer.weight = nn.Parameter(weight.clone())
            layer.out_features, layer.in_features = weight.shape
            logger.debug("%s now %d -> %d", path, layer.in_features, layer.out_features)
        parameters = dict(model.named_parameters())
        for name, kept in self.vectors.items():
            owner, _, leaf = name.rpartition(".")
            value = parameters[name]
            setattr(modules[owner], leaf, nn.Parameter(value[..., torch.tensor(kept, device=value.device)].clone()))


def _vector(producer: str, name: str, group: tuple[Binding, ...]) -> Optional[str]:
    """The parameter a per-feature constant of ``producer``'s space holds (None: the producer's own bias)."""
    if any(b.parameter == f"{producer}.bias" for b in group):
        return None
    if len(group) != 1 or group[0].transposed:
        held = "no parameter of the module" if not group else f"held by {len(group)} parameters"
        raise ValueError(f"{producer}: the per-feature constant {name} on its units is {held}; cannot remove "
                         "units through it")
    return group[0].parameter


def plan_unit_removal(slices: Mapping[Site, tuple[str, SlicePlan]], ops: Mapping[Site, WeightedOp],
                      bindings: Mapping[str, tuple[Binding, ...]]) -> UnitRemoval:
    """The slicing of the module rules for ``slices`` (site -> its Linear's path and plan), checked against the
    ONNX graph of ``ops`` (site -> weighted op); nothing is changed yet."""
    by_node = {id(op.node): op for op in ops.values()}
    removal, consumed = UnitRemoval(), set()
    for site, (path, plan) in slices.items():
        removal.layers[path] = (plan.rows, plan.cols)
        if plan.rows is None:
            continue
        space = feature_space(ops[site], by_node)
        if isinstance(space, str):
            raise ValueError(f"{site}: cannot remove its units: {space}")
        for consumer in space.consumers:
            kept = slices.get(consumer.site)
            if kept is None or kept[1].cols is None or not np.array_equal(kept[1].cols, plan.rows):
                raise ValueError(f"{site}: its consumer {consumer.site} does not drop the same units")
            consumed.add(consumer.site)
        for node, i, _ in space.constants:
            name = node.inputs[i].name
            vector = _vector(path, name, bindings.get(name, ()))
            if vector is not None:
                removal.vectors[vector] = plan.rows
    orphans = [site for site, (_, plan) in slices.items() if plan.cols is not None and site not in consumed]
    if orphans:
        raise ValueError(f"{orphans[0]}: drops input columns that no producer's units removal drops")
    return removal
