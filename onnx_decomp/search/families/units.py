"""The units family: whole hidden units of a chain removed (the paper's isolated nodes), FLAP-style.

A unit is a pair of MatMul/Gemm layers linked through per-feature ops whose hidden space only the second reads
(``onnx_decomp_passes.find_chains`` and the feature space ``RemoveUnits`` needs: nothing else reads a tensor
in between, no weight shared or cast); the channels family (``channels``) makes the same units of Convs. Hidden unit ``u`` scores ``e_u * std(h_u) * ||W2[:, u]||``: the output
energy it carries around its mean on the original model's tuning activations (its mean moves into the bias
when it goes), weighed by the statistical evidence ``e_u`` (the mean evidence of its entries in W1's row and
W2's column: init-like units weigh little). Rungs keep the best-scoring ``SHARES`` of the units.

Cuts: the producer keeps the rows of the kept units as they are (so the consumer's kept inputs do not change),
the consumer their columns (refit: least squares on the kept units, intercept free, so the removed
units' mean contribution lands in the bias; plain cut: that mean moved into the bias). The plans are
``SlicePlan``s: the rewrite is smaller weights, nothing else. The structure is coupled: all cuts or none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

import numpy as np

from onnx_decomp.search.families.base import Cut, Family, Norms, SearchSpace, Structure, Unit
from onnx_decomp.search.network import Layer, Stored
from onnx_decomp.search.refit import Refitter, plain_cut
from onnx_decomp_passes import BlockPlan, Branch, Site, SlicePlan, feature_space, find_chains

SHARES = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25)  # of the hidden units kept, cautious to aggressive


@dataclass(frozen=True)
class SliceCut(Cut):
    """The layer keeps ``rows`` (None: all) and ``cols`` (None: all). A producer's kept rows are not refitted:
    they keep their values, so the consumer's kept inputs are unchanged."""

    plan: SlicePlan

    @property
    def keeps_what_is_read(self) -> bool:
        return self.plan.cols is None

    @property
    def sides(self) -> frozenset:
        return frozenset(side for side in ("rows", "cols") if getattr(self.plan, side) is not None)

    def join(self, held: Cut) -> Cut:
        """Removed rows (columns) of a held slice stay when this one removes only columns (rows)."""
        if not isinstance(held, SliceCut):
            return self
        plan = replace(self.plan, **{side: getattr(held.plan, side) for side in held.sides - self.sides})
        return SliceCut(plan)

    def _blocks(self) -> BlockPlan:
        rows = np.arange(self.plan.n_out) if self.plan.rows is None else self.plan.rows
        cols = np.arange(self.plan.n_in) if self.plan.cols is None else self.plan.cols
        return BlockPlan(self.plan.n_out, self.plan.n_in, (Branch(rows, cols),),
                         np.setdiff1d(np.arange(self.plan.n_out), rows))

    def macs(self, layer: Layer) -> int:
        return self.plan.macs

    def outputs(self, layer: Layer) -> int:
        return self.plan.kept[0]

    def plain(self, layer: Layer, dense: np.ndarray) -> Stored:
        stored = plain_cut(layer, self._blocks())
        if self.plan.cols is None or layer.bias is None:
            return stored
        gone = np.setdiff1d(np.arange(self.plan.n_in), self.plan.cols)
        moved = layer.matrix()[:, gone] @ dense[:, gone].mean(0)  # FLAP: the removed units' mean, as bias
        return stored[0], layer.store_bias(layer.bias_vector(stored) + moved)

    def refit(self, layer: Layer, dense: np.ndarray, cut: np.ndarray, refitter: Refitter) -> Stored:
        if self.keeps_what_is_read:
            return plain_cut(layer, self._blocks())
        return refitter(layer, self._blocks(), dense, cut)


@dataclass
class UnitsUnit(Unit):
    """``layers``: the space's producers (``producers`` of them; one for a chain), then its consumers."""

    scores: Optional[np.ndarray] = None  # per hidden unit, higher is kept longer
    producers: int = 1
    family = "units"
    nested = True
    what = "units"

    def label(self, rung: int) -> str:
        return f"keep {self.rungs[rung]:.1%} of {self.what}"

    def structure(self, rung: int, norms: Norms) -> Structure:
        hidden = self.layers[0].shape[0]
        kept = np.sort(np.argsort(-self.scores, kind="stable")[:max(1, round(self.rungs[rung] * hidden))])
        cuts = {layer.site: SliceCut(SlicePlan(*layer.shape, rows=kept)) for layer in self.layers[:self.producers]}
        for layer in self.layers[self.producers:]:  # a producer may read its own space too: both sides cut
            cut = SliceCut(SlicePlan(*layer.shape, cols=layer.op.input_columns(kept)))
            cuts[layer.site] = cut.join(cuts[layer.site]) if layer.site in cuts else cut
        return Structure(self.label(rung), cuts, coupled=True)


def unit_scores(producers: list[Layer], consumers: list[Layer], taps: Mapping[Site, np.ndarray],
                evidence: dict) -> np.ndarray:
    """``e_u * sqrt(sum of var(x_j) ||W_c[:, j]||^2)`` over the consumers ``c`` and the columns ``j`` that read
    unit ``u`` (a Conv's: the unit's window; one column of a MatMul: ``std(h_u) ||W2[:, u]||``), from each
    consumer's input rows ``taps``; ``e_u`` the mean evidence of u's producer rows and consumer columns."""
    hidden = producers[0].shape[0]
    energy, shares = np.zeros(hidden), []
    for layer in consumers:
        rows = taps[layer.site]
        spread = rows.var(0) * (np.ptp(rows, axis=0) > 0)  # a constant column: exactly 0, not rounding noise
        energy += (spread * np.linalg.norm(layer.matrix(), axis=0) ** 2).reshape(hidden, -1).sum(1)
        if evidence.get(layer.site) is not None:
            shares.append(evidence[layer.site].astype(np.float32).mean(axis=0).reshape(hidden, -1).mean(1))
    shares += [evidence[layer.site].astype(np.float32).mean(axis=1) for layer in producers
               if evidence.get(layer.site) is not None]
    return np.sqrt(energy) * (np.mean(shares, axis=0) if shares else 1.0)


class Units(Family):
    name = "units"
    blocks = False

    def units(self, space: SearchSpace) -> list[Unit]:
        network = space.network
        layers = {id(layer.op.node): layer for layer in network.linear}
        ops = {id(layer.op.node): layer.op for layer in network.linear}
        units = []
        for producer, consumer in find_chains([layer.op for layer in network.linear]):
            first, second = layers[id(producer.node)], layers[id(consumer.node)]
            found = feature_space(producer, ops)
            if isinstance(found, str) or [c.node for c in found.consumers] != [consumer.node] or \
                    any(len(op.weight.outputs) > 1 or op.cast is not None for op in (producer, consumer)):
                continue
            evidence = space.evidence_of([first, second])
            scores = unit_scores([first], [second], space.taps, evidence)
            units.append(UnitsUnit([first, second], list(SHARES), evidence, scores))
        return units
