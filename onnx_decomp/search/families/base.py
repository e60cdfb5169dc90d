"""What a structure family is: units of layers planned together, each with a ladder of structures from
cautious to aggressive, and what a structure does to each of its layers.

- ``Cut``: what a structure does to one layer: the multiply-accumulates it leaves per activation vector,
  the plain cut, the refit on calibration activations, and the plan the rewrite (``passes/``) executes.
  ``BlockCut`` is the block kind (``BlockPlan``: entries outside the blocks dropped; refit per block).
- ``Structure``: one rung of a unit: its label, a cut per layer (keyed by ``Site``), the partition of the
  unit's index spaces it came from, if any, and whether its cuts only hold together (``coupled``: units
  removed across layers; no other structure may then replace some of them and leave the rest).
- ``Unit``: layers planned together and their rungs; ``structure(rung, norms)`` plans a rung from the layers'
  input norms (a bootstrap resample re-plans by calling it with its own norms).
- ``Family``: makes the units it finds in a model (``SearchSpace``: the network, its shapes, the evidence,
  the settings). Families are registered by name in ``search.families.FAMILIES``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from onnx_decomp.config import AnnealConfig
from onnx_decomp.planning.partition import Partition
from onnx_decomp.search.evidence import StoredEvidence
from onnx_decomp.search.network import Layer, Network, Stored
from onnx_decomp.search.refit import Refitter, plain_cut
from onnx_decomp_passes import BlockPlan, Plan, Site

Norms = Mapping[Site, np.ndarray]  # layer site -> input norms


class Cut(abc.ABC):
    """What a structure does to one layer (module rule). ``keeps_what_is_read``: the outputs the layers after
    it still read are unchanged (a producer whose removed units nothing reads any more). ``sides``: what of the
    layer the cut decides (``"rows"``, ``"cols"``); ``join``: the cut taking over from ``held``, the cut in
    force, keeping what ``held`` decides on the sides this one leaves alone (a layer whose output channels one
    structure removes and whose input channels another does); by default it replaces ``held`` whole."""

    plan: Plan
    keeps_what_is_read = False
    sides = frozenset({"rows", "cols"})

    def join(self, held: "Cut") -> "Cut":
        return self

    @abc.abstractmethod
    def macs(self, layer: Layer) -> int:
        """Multiply-accumulates per activation vector that the layer keeps."""

    def outputs(self, layer: Layer) -> int:
        """Output features the rewritten layer still computes (activation products reading them shrink too)."""
        return layer.shape[0]

    @abc.abstractmethod
    def plain(self, layer: Layer, dense: np.ndarray) -> Stored:
        """The layer's weights cut without refitting (``dense``: the original model's activation rows)."""

    @abc.abstractmethod
    def refit(self, layer: Layer, dense: np.ndarray, cut: np.ndarray, refitter: Refitter) -> Stored:
        """The cut weights refitted so that the layer reproduces its dense output on the original model's
        activation rows ``dense`` from the cut model's rows ``cut``."""


@dataclass(frozen=True)
class BlockCut(Cut):
    plan: BlockPlan

    def macs(self, layer: Layer) -> int:
        return self.plan.macs

    def plain(self, layer: Layer, dense: np.ndarray) -> Stored:
        return plain_cut(layer, self.plan)

    def refit(self, layer: Layer, dense: np.ndarray, cut: np.ndarray, refitter: Refitter) -> Stored:
        return refitter(layer, self.plan, dense, cut)


@dataclass(frozen=True)
class Structure:
    label: str
    cuts: dict[Site, Cut]
    partition: Optional[Partition] = None
    coupled: bool = False

    @property
    def plans(self) -> dict[Site, Plan]:
        return {site: cut.plan for site, cut in self.cuts.items()}


@dataclass
class Unit(abc.ABC):
    """Layers planned together (in topological order), their rungs, and the evidence they use (per site).
    ``nested``: every rung keeps less than the one before (fewer units, a lower rank), so a rung that breaks
    the tolerance ends the ladder; block partitions are not nested (a k=2 cut can split natural blocks that
    k=4 keeps)."""

    layers: list[Layer]
    rungs: list
    evidence: Mapping[Site, Optional[np.ndarray]] = field(repr=False)
    family = ""  # the registered name of the family making the unit
    nested = False

    @property
    def name(self) -> str:
        return "+".join(layer.weight for layer in self.layers)

    @abc.abstractmethod
    def label(self, rung: int) -> str:
        """How reports name rung ``rung``."""

    @abc.abstractmethod
    def structure(self, rung: int, norms: Norms) -> Structure:
        """The structure of rung ``rung`` given the layers' input norms."""

    def release(self) -> None:
        """Drop cached products (recomputed if the unit plans again)."""


@dataclass(frozen=True)
class SearchSpace:
    """What families plan from: the network's layers, every tensor's shape, the statistical evidence (on disk,
    ``search.evidence``) and the null model per weight name, the original model's tuning activations per layer,
    and the run's settings; ``notes``: what families skipped and why, for the report."""

    network: Network
    shapes: Mapping[str, list]
    evidence: StoredEvidence
    config: AnnealConfig
    nulls: Mapping[str, object] = field(default_factory=dict)
    taps: Mapping[Site, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def evidence_of(self, layers: list[Layer]) -> StoredEvidence:
        """The layers' evidence by site, read at every lookup (``None`` where a weight has none)."""
        return self.evidence.keyed({layer.site: layer.weight for layer in layers})


class Family(abc.ABC):
    """Makes the units of one kind of structure; ``blocks``: its structures are partitions into blocks."""

    name: str
    blocks = True

    @abc.abstractmethod
    def units(self, space: SearchSpace) -> list[Unit]:
        """Every unit of this family in the model with a non-empty ladder."""


def block_counts(smallest: int, config: AnnealConfig) -> list[int]:
    """The block ladder ``k = 2, 4, 8, ...`` up to the largest count and half the smallest index space, or the
    one count asked for (if it fits)."""
    settings = config.block
    if settings.blocks is not None:
        return [settings.blocks] if settings.blocks <= smallest else []
    counts, k = [], 2
    while k <= min(settings.max_blocks, smallest // 2):
        counts.append(k)
        k *= 2
    return counts


def block_label(value: int, balanced: bool) -> str:
    return "trim" if value == 1 else f"k={value}" + ("" if balanced else " unbalanced")
