"""Annealing units and their candidate structures, from cautious to aggressive.

Units (weights planned together with one partition):
- ``single``: one layer. Rungs: ``trim`` (rows that carry nothing become constant rows, inputs that carry
  nothing unused; ``importance``), then ``k=2, 4, 8, ...`` balanced blocks from spectral co-clustering of
  the entries' importance (``planning.coclustering``).
- ``chain``: layers linked through per-feature ops (``onnx_decomp_passes.find_chains``): every linked pair,
  and every maximal stack of three or more. Rungs ``k=2, 4, ...``: one partition of inputs, every hidden
  space and outputs, by co-clustering the signed composite of the evidence-weighted weights, the first
  layer's columns scaled by its input norms (design.md section 4: init noise cancels along paths).
- ``square``: a layer whose input and output share one index space: its output (or its bias Add's) is added
  to its own input (a residual map), or its node is named in ``AnnealConfig.square``. Rungs ``drop 2%, 5%,
  ...``: the weakest entries carrying that share of the total importance are dropped and the rest planned in
  the directed view (``planning.directed``: strong components, levels, weak components). A square layer is
  a ``single`` unit too.
- ``attention``: the query, key, value and output projections of a multi-head attention block
  (``search.attention``). Rungs ``k=2, 4, ...`` up to the number of heads: k groups of whole heads, each
  reading its own inputs and writing its own outputs (``planning.attention``), the four layers cut
  consistently. The projections are ``single`` units too.
Every structure also drops what carries nothing. ``k`` stops at ``max_blocks`` and at half the smallest
index space of the unit; with ``blocks=K`` the ladders hold ``k=K`` alone (no trim, no square rungs).
Plans depend on the calibration data only through the input norms, so a bootstrap resample re-plans by
calling ``Unit.structure`` with its own norms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from onnx_decomp.config import AnnealConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.planning.attention import head_groups
from onnx_decomp.planning.coclustering import Stack, blocks_plan, spectral_cocluster
from onnx_decomp.search.attention import find_attention
from onnx_decomp.planning.directed import directed_structure
from onnx_decomp.search.importance import evidence_weighted, importance, live_columns
from onnx_decomp.search.network import Layer, Network
from onnx_decomp_passes import BlockPlan, find_chains

SQUARE_SHARES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
Norms = Mapping[int, np.ndarray]  # layer index -> input norms


@dataclass(frozen=True)
class Structure:
    label: str
    plans: dict[int, BlockPlan]  # layer index -> plan


def _trimmed(plan: BlockPlan, layer: Layer, norms: np.ndarray) -> BlockPlan:
    """``plan``'s blocks without the rows and columns that carry nothing."""
    rows, cols = np.full(plan.n_out, -1), np.full(plan.n_in, -1)
    for label, branch in enumerate(plan.branches):
        rows[branch.rows], cols[branch.cols] = label, label
    return blocks_plan(rows, cols, layer.live_rows & (rows >= 0), live_columns(norms) & (cols >= 0))


@dataclass
class Unit:
    """Layers planned together, their rungs (``kind``-specific parameters), and the evidence they use."""

    kind: str  # single, chain, square, attention
    layers: list[Layer]  # attention: query, key, value, output
    rungs: list
    evidence: dict[int, Optional[np.ndarray]] = field(repr=False)
    seed: int = 0
    balanced: bool = True
    heads: int = 0  # attention only
    _stack: Optional[Stack] = field(default=None, repr=False)
    _score: tuple = field(default=(None, None), repr=False)  # (norms it was computed from, importance)

    @property
    def name(self) -> str:
        names = "+".join(layer.weight for layer in self.layers)
        suffix = {"square": " (directed)", "attention": f" ({self.heads} heads)"}.get(self.kind, "")
        return names + suffix

    def label(self, rung: int) -> str:
        value = self.rungs[rung]
        if self.kind == "square":
            return f"drop {value:.0%}"
        return "trim" if value == 1 else f"k={value}" + ("" if self.balanced else " unbalanced")

    def _importance(self, norms: np.ndarray) -> np.ndarray:
        """The first layer's importance under ``norms``, kept for the next rung with the same norms."""
        if self._score[0] is not norms:
            first = self.layers[0]
            self._score = (norms, importance(first, self.evidence[first.index], norms))
        return self._score[1]

    def release(self) -> None:
        """Drop the cached products and importance (recomputed if the unit plans again)."""
        self._stack, self._score = None, (None, None)

    def structure(self, rung: int, norms: Norms) -> Structure:
        """The plans of rung ``rung`` given the layers' input norms (module rules)."""
        value, first = self.rungs[rung], self.layers[0]
        if self.kind == "chain":
            if self._stack is None:
                self._stack = Stack([evidence_weighted(layer, self.evidence[layer.index]) for layer in self.layers])
            plans = self._stack.plans(value, self.seed, self.balanced, column_scale=norms[first.index])
            return Structure(self.label(rung), {layer.index: _trimmed(plan, layer, norms[layer.index])
                                                for layer, plan in zip(self.layers, plans)})
        if self.kind == "attention":
            scores = [importance(layer, self.evidence[layer.index], norms[layer.index]) for layer in self.layers]
            groups = head_groups(scores[:3], scores[3], self.heads, value, self.seed, self.balanced)
            plans = groups.plans(self.layers[0].shape[0] // self.heads)
            return Structure(self.label(rung), {layer.index: _trimmed(plan, layer, norms[layer.index])
                                                for layer, plan in zip(self.layers, plans)})
        score = self._importance(norms[first.index])
        live = live_columns(norms[first.index])
        if self.kind == "square":
            ordered = np.sort(score, axis=None)
            dropped = int(np.searchsorted(np.cumsum(ordered, dtype=np.float64), value * ordered.sum(dtype=np.float64),
                                          side="right"))
            cut = ordered[dropped - 1] if dropped else -np.inf
            keep = (score > cut) & first.live_rows[:, None] & live[None, :]
            return Structure(self.label(rung), {first.index: directed_structure(keep).plan})
        if value == 1:
            rows, cols = np.zeros(first.shape[0], np.int64), np.zeros(first.shape[1], np.int64)
        else:
            rows, cols = spectral_cocluster(score, value, seed=self.seed, balanced=self.balanced)
        return Structure(self.label(rung), {first.index: blocks_plan(rows, cols, first.live_rows, live)})


def _block_counts(smallest: int, config: AnnealConfig) -> list[int]:
    if config.blocks is not None:
        return [config.blocks] if config.blocks <= smallest else []
    counts, k = [], 2
    while k <= min(config.max_blocks, smallest // 2):
        counts.append(k)
        k *= 2
    return counts


def _stacks(pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Maximal paths of three or more layers through the linked pairs."""
    after, before = dict(pairs), {second: first for first, second in pairs}
    stacks = []
    for start in after:
        if start in before:
            continue
        path = [start]
        while path[-1] in after:
            path.append(after[path[-1]])
        if len(path) >= 3:
            stacks.append(path)
    return stacks


def residual_layers(layers: Sequence[Layer]) -> set[int]:
    """Square layers whose output (or their bias Add's output) is added to their own input."""
    found = set()
    for layer in layers:
        if layer.shape[0] != layer.shape[1]:
            continue
        node, bias = layer.op.node, layer.output_bias
        outputs = [node.outputs[0]] + ([bias.node.outputs[0]] if bias is not None and bias.node is not node else [])
        if any(reader.op == "Add" and node.inputs[0] in reader.inputs for output in outputs for reader in output.outputs):
            found.add(layer.index)
    return found


def build_units(ctx: ModelContext, network: Network, evidence: Mapping[str, np.ndarray],
                config: AnnealConfig) -> list[Unit]:
    """Every unit of the network with a non-empty ladder (module rules)."""
    by_node = {layer.node: layer for layer in network.layers}
    unknown = sorted(set(config.square) - set(by_node))
    if unknown:
        raise UnsupportedConstructError(f"square: {unknown} name no annealable MatMul/Gemm node")
    weights = {layer.index: evidence.get(layer.weight) for layer in network.layers}

    def unit(kind: str, layers: list[Layer], rungs: list, heads: int = 0) -> list[Unit]:
        return [Unit(kind, layers, rungs, weights, config.seed, config.balanced, heads)] if rungs else []

    units = []
    for layer in network.layers:
        trim = [] if config.blocks is not None else [1]
        units += unit("single", [layer], trim + _block_counts(min(layer.shape), config))
    pairs = [(by_node[a.node.name].index, by_node[b.node.name].index) for a, b in find_chains(ctx.ops)
             if a.node.name in by_node and b.node.name in by_node]
    for chain in [list(pair) for pair in pairs] + _stacks(pairs):
        layers = [network.layers[i] for i in chain]
        smallest = min([layers[0].shape[1]] + [layer.shape[0] for layer in layers])
        units += unit("chain", layers, _block_counts(smallest, config))
    for block in find_attention(network.layers, ctx.shapes):
        layers = [network.layers[i] for i in block.layers]
        smallest = min(min(layer.shape) for layer in layers)
        units += unit("attention", layers, [k for k in _block_counts(smallest, config) if k <= block.heads],
                      block.heads)
    square = residual_layers(network.layers) | {by_node[name].index for name in config.square}
    for index in sorted(square):
        if network.layers[index].shape[0] != network.layers[index].shape[1]:
            raise UnsupportedConstructError(f"square: node {network.layers[index].node!r} is not square")
        units += unit("square", [network.layers[index]], [] if config.blocks is not None else list(SQUARE_SHARES))
    return units
