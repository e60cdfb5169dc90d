"""The low-rank family: one MatMul/Gemm or Conv (one group) as the product of two thinner ones, activation-aware
(a Conv's matrix view ``[C_out, C_in * window]`` on its patches: its kernel to ``r`` channels, then a 1 x 1 Conv).

Rungs are ranks, high to low: the directions training confirmed by the criterion's spectral form
(``stats.criterion.spectral_rank``: singular values above the Marchenko-Pastur edge of the weight's null),
then the ranks that keep ``MAC_SHARES`` of the layer's multiply-accumulates, each kept only where it saves
MACs (``r (n_in + n_out) < n_in n_out``). The cut is reduced-rank regression on calibration activations
(``Refitter.low_rank``; the plain cut is its activation-whitened truncated SVD, SVD-LLM); the plan is a
``LowRankPlan``, run as two products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_decomp.search.families.base import Cut, Family, Norms, SearchSpace, Structure, Unit
from onnx_decomp.search.network import Layer, Stored
from onnx_decomp.search.refit import Refitter
from onnx_decomp.stats.criterion import spectral_rank
from onnx_decomp_passes import LowRankPlan

MAC_SHARES = (0.75, 0.6, 0.5, 0.4, 0.3, 0.2)


@dataclass(frozen=True)
class LowRankCut(Cut):
    plan: LowRankPlan

    def macs(self, layer: Layer) -> int:
        return self.plan.macs

    def plain(self, layer: Layer, dense: np.ndarray) -> Stored:
        return Refitter().low_rank(layer, self.plan.rank, dense, dense)

    def refit(self, layer: Layer, dense: np.ndarray, cut: np.ndarray, refitter: Refitter) -> Stored:
        return refitter.low_rank(layer, self.plan.rank, dense, cut)


@dataclass
class LowRankUnit(Unit):
    spectral: int = 0  # the confirmed directions (the first rung when it saves MACs)
    family = "lowrank"
    nested = True

    def label(self, rung: int) -> str:
        rank = self.rungs[rung]
        return f"rank {rank}" + (" (spectral)" if rank == self.spectral else "")

    def structure(self, rung: int, norms: Norms) -> Structure:
        layer = self.layers[0]
        return Structure(self.label(rung), {layer.site: LowRankCut(LowRankPlan(*layer.shape, self.rungs[rung]))})


def ranks(n_out: int, n_in: int, spectral: int) -> list[int]:
    """The module's ladder: the spectral rank and the MAC shares' ranks that save MACs, high to low."""
    per_rank = n_out + n_in
    wanted = {spectral, *(int(share * n_out * n_in) // per_rank for share in MAC_SHARES)}
    return sorted((r for r in wanted if 1 <= r and r * per_rank < n_out * n_in), reverse=True)


class LowRank(Family):
    name = "lowrank"
    blocks = False

    def units(self, space: SearchSpace) -> list[Unit]:
        units = []
        for layer in space.network.layers:
            null = space.nulls.get(layer.weight)
            spectral = spectral_rank(layer.matrix(), null.std) if null is not None else 0
            rungs = ranks(*layer.shape, spectral)
            if rungs:
                units.append(LowRankUnit([layer], rungs, space.evidence_of([layer]), spectral))
        return units
