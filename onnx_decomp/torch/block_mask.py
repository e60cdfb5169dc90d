"""Hold a model's weights to a block structure while it trains.

Rules:
- ``plans`` maps a key to a ``onnx_decomp_passes.BlockPlan`` or a Boolean mask (True = keep).
- With ``onnx_model`` (the model exported from these very weights), a key that is a ``Site`` (as annealing
  reports plans) or names a MatMul/Gemm weight initializer of it takes the mask as that operator's ``[n_out, n_in]``; the initializer is bound to its
  parameters by value (``binding``) and the mask transposed onto a parameter that holds ``W.T`` (a
  ``[in, out]`` matrix multiplied from the right). Any other key must name a parameter and takes the mask
  in the parameter's own layout (``nn.Linear.weight`` is ``[n_out, n_in]``).
- Masked entries are set to zero at once. A gradient hook multiplies every gradient of the parameter by
  the mask, so masked entries get exactly zero gradient; with an optimizer created after the mask (SGD
  with momentum and L2 decay, Adam, AdamW, RMSprop: zero gradient, zero value and zero state give a zero
  update) they stay exactly zero. ``BlockMask.enforce()`` re-zeroes them, for an optimizer that carries
  state from dense training; ``finetune_under_mask`` calls it after every step.
- Biases are never touched: an output row the plan leaves empty (a constant row) keeps its bias.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import numpy as np
import onnx
import torch

from onnx_decomp.io.graph import import_graph
from onnx_decomp.io.model_io import load_model
from onnx_decomp.torch.binding import Binding, bind_initializers, float_initializers
from onnx_decomp_passes import BlockPlan, Layout, Site, find_weighted_ops

logger = logging.getLogger(__name__)

MaskLike = Union[BlockPlan, np.ndarray, torch.Tensor]


@dataclass
class BlockMask:
    """The masks in force: parameter name -> Boolean tensor in the parameter's layout."""

    masks: dict[str, torch.Tensor]
    parameters: dict[str, torch.nn.Parameter]
    _handles: list = field(default_factory=list, repr=False)

    @torch.no_grad()
    def enforce(self) -> None:
        """Set every masked entry to exactly zero again."""
        for name, mask in self.masks.items():
            self.parameters[name].masked_fill_(~mask, 0.0)

    def remove(self) -> None:
        """Drop the gradient hooks (the weights keep their current values)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _as_bool(mask: MaskLike) -> np.ndarray:
    if isinstance(mask, BlockPlan):
        return mask.mask()
    if torch.is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask, dtype=bool)


def _weight_layouts(model: onnx.ModelProto) -> dict[str, Layout]:
    """Initializer name -> the layout in which the MatMul/Gemm reading it holds ``W [n_out, n_in]``."""
    ops, _ = find_weighted_ops(import_graph(model))
    return {op.weight.name: op.layout for op in ops}


def parameter_masks(plans: Mapping[Union[str, Site], MaskLike], parameters: Mapping[str, torch.nn.Parameter],
                    layouts: Mapping[str, Layout], bindings: Mapping[str, tuple[Binding, ...]]) -> dict[str, np.ndarray]:
    """Parameter name -> mask in the parameter's layout (module rules); ONNX weight names resolve through
    ``layouts`` (initializer -> the layout its MatMul/Gemm reads it in) and ``bindings``."""
    targets = {}
    for key, plan in plans.items():
        name = key.weight if isinstance(key, Site) else key
        mask = _as_bool(plan)
        if name in layouts and name in bindings:
            for binding in bindings[name]:  # the parameter holds the initializer, or its transpose
                targets[binding.parameter] = binding.layout(layouts[name]).from_matrix(mask)
        elif name in parameters:
            targets[name] = mask
        else:
            raise ValueError(f"{name!r} is neither a parameter nor a MatMul/Gemm weight bound to one (ONNX "
                             "initializer names resolve with onnx_model=, the model exported from these weights)")
    for name, mask in targets.items():
        if mask.shape != tuple(parameters[name].shape):
            raise ValueError(f"mask for {name} has shape {mask.shape}, parameter {tuple(parameters[name].shape)}")
    return targets


def _targets(model: torch.nn.Module, plans: Mapping[Union[str, Site], MaskLike],
             onnx_model: Optional[Union[str, os.PathLike, onnx.ModelProto]]) -> dict[str, np.ndarray]:
    """Parameter name -> mask in the parameter's layout (module rules)."""
    parameters = dict(model.named_parameters())
    layouts, bindings = {}, {}
    if onnx_model is not None:
        proto = load_model(onnx_model)
        layouts = _weight_layouts(proto)
        values = {name: p.detach().cpu().numpy() for name, p in parameters.items()}
        bindings = bind_initializers(float_initializers(proto), values)
    return parameter_masks(plans, parameters, layouts, bindings)


def apply_block_mask(model: torch.nn.Module, plans: Mapping[Union[str, Site], MaskLike],
                     onnx_model: Optional[Union[str, os.PathLike, onnx.ModelProto]] = None) -> BlockMask:
    """Zero the entries outside ``plans`` and keep their gradients zero (module rules)."""
    parameters = dict(model.named_parameters())
    masks = {}
    result = BlockMask(masks, {})
    for name, mask in _targets(model, plans, onnx_model).items():
        parameter = parameters[name]
        keep = torch.as_tensor(mask, device=parameter.device)
        masks[name] = keep
        result.parameters[name] = parameter
        result._handles.append(parameter.register_hook(lambda grad, keep=keep: grad * keep))
        logger.debug("masked %s: keeps %d of %d entries", name, int(keep.sum()), keep.numel())
    result.enforce()
    return result
