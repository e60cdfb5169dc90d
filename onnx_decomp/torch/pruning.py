"""Structured pruning with Torch-Pruning (DepGraph, ``pip install torch-pruning``): the peer that removes
whole attention heads and whole FFN hidden units and keeps every remaining layer dense.

Rule: Torch-Pruning's ``MetaPruner`` traces the model's dependency graph (which channels of which layers must
go together); ``head_ratio`` of the heads of every attention (``num_heads`` names each query, key and value
projection with its head count; whole heads go, ``prune_head_dims=False``) and ``channel_ratio`` of the
output channels of every other prunable group (the FFN hidden units) are removed, the same ratio in every
layer (``global_pruning=False``); the modules in ``ignored`` keep their output channels, which for a
transformer must include the embeddings and the output head so that the residual width stays. Importance:
first-order Taylor (``|w * dL/dw|`` summed over each group), its gradients accumulated over
``gradient_batches`` (each ``(*inputs, target)``, loss ``loss_fn``); with no batches, the L2 magnitude.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from torch import nn


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise ImportError("structured pruning needs Torch-Pruning: pip install torch-pruning") from None
    return torch_pruning


def prune_structured(model: nn.Module, example_inputs: Any, num_heads: Mapping[nn.Module, int],
                     ignored: Sequence[nn.Module], head_ratio: float, channel_ratio: float,
                     loss_fn: Optional[Callable] = None, gradient_batches: Iterable = ()) -> None:
    """Prune ``model`` in place (module rule)."""
    tp = _torch_pruning()
    batches = list(gradient_batches)
    importance = tp.importance.GroupTaylorImportance() if batches else tp.importance.GroupMagnitudeImportance(p=2)
    was_training = model.training
    model.zero_grad()
    if batches:
        model.train()
        for *inputs, target in batches:
            loss_fn(model(*inputs), target).backward()
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=importance, pruning_ratio=channel_ratio,
                                  head_pruning_ratio=head_ratio, num_heads=dict(num_heads), prune_num_heads=True,
                                  prune_head_dims=False, ignored_layers=list(ignored), global_pruning=False)
    pruner.step()
    model.zero_grad()
    for parameter in model.parameters():
        parameter.grad = None
    model.train(was_training)
