"""Low-rank factorisation of ``nn.Linear`` layers: the peer that keeps every layer dense but thinner.

Rule: ``W [out, in] = U S V^T``; rank r keeps the r largest singular values and the layer becomes
``Sequential(Linear(in, r, bias=False), Linear(r, out))`` with weights ``sqrt(S_r) V_r^T`` and ``U_r sqrt(S_r)``
(the factors the ONNX low-rank rewrite uses, ``onnx_decomp_passes.forms.lowrank.factors``) and the original
bias on the second: the best rank-r approximation of ``W`` (Eckart-Young),
``r * (in + out)`` multiply-accumulates per row instead of ``in * out``. Fine-tune afterwards to win back
what the truncation lost.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from onnx_decomp_passes.forms.lowrank import factors


def rank_for_macs(n_out: int, n_in: int, macs: float) -> int:
    """The largest rank whose factorised layer costs at most ``macs`` per row (at least 1, at most full)."""
    return int(max(1, min(min(n_out, n_in), macs // (n_out + n_in))))


def factorized(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``layer`` as the rank-``rank`` product of the module rule."""
    up, down = factors(layer.weight.detach().cpu().numpy(), rank)
    weight = layer.weight
    first = nn.Linear(layer.in_features, rank, bias=False, device=weight.device, dtype=weight.dtype)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(down))
        second.weight.copy_(torch.from_numpy(up))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize(model: nn.Module, ranks: Mapping[str, int]) -> None:
    """Replace every ``nn.Linear`` named in ``ranks`` (module paths, ``"blocks.0.q"``) by its rank-r product,
    in place."""
    modules = dict(model.named_modules())
    for name, rank in ranks.items():
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"{name!r} is not an nn.Linear of the model")
        if not 1 <= rank <= min(layer.in_features, layer.out_features):
            raise ValueError(f"rank {rank} out of range for {name} ({layer.out_features} x {layer.in_features})")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, factorized(layer, rank))
