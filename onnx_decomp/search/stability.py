"""Stability of accepted partitions: do they persist across bootstrap resamples of the calibration data?

Rule: for each accepted structure still in force, ``bootstrap`` resamples of the tuning activation rows
(drawn with replacement, seeded) give new input norms; the unit's rung is planned again from them
(``Unit.structure``); each index space the plans partition (the unit's inputs, where its first plan's
branches read disjoint ones; every hidden space of a chain; its outputs) is compared with the accepted
partition by the adjusted Rand index (Hubert and Arabie 1985; 1 = the same partition, about 0 = chance).
A structure is stable when the mean over resamples of the worse of its inputs' and outputs' ARI is at least
``STABLE_ARI``: the paper's "stable substructures" (its criterion is not public; this one is ours). Hidden
spaces are reported, not judged: a hidden unit that serves several groups can join either block at about
the same cost, and the refit absorbs the difference. A structure that splits nothing (a trim), or is no
partition into blocks (units removed, low rank), is not tested.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from onnx_decomp.report.anneal import Stability
from onnx_decomp.search.families import Unit
from onnx_decomp.search.importance import column_norms
from onnx_decomp_passes import BlockPlan, Site

STABLE_ARI = 0.9


def adjusted_rand_index(first: np.ndarray, second: np.ndarray) -> float:
    """The adjusted Rand index of two labelings of the same items."""
    _, a = np.unique(first, return_inverse=True)
    _, b = np.unique(second, return_inverse=True)
    table = np.zeros((a.max(initial=0) + 1, b.max(initial=0) + 1))
    np.add.at(table, (a, b), 1)

    def pairs(x):
        return float((x * (x - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = len(a) * (len(a) - 1) / 2
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


def _labels(plan: BlockPlan) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Row labels (branch number; constant rows -1), and column labels (unused -1) if branches read
    disjoint columns, else None."""
    rows, cols = np.full(plan.n_out, -1), np.full(plan.n_in, -1)
    disjoint = True
    for label, branch in enumerate(plan.branches):
        rows[branch.rows] = label
        disjoint = disjoint and bool(np.all(cols[branch.cols] == -1))
        cols[branch.cols] = label
    return rows, cols if disjoint else None


def index_spaces(plans: list[BlockPlan]) -> dict[str, np.ndarray]:
    """The partitions of a unit's index spaces (module rule), from its plans in topological order."""
    spaces = {}
    inputs = _labels(plans[0])[1]
    if inputs is not None:
        spaces["inputs"] = inputs
    for number, plan in enumerate(plans[:-1], 1):
        spaces[f"hidden {number}"] = _labels(plan)[0]
    spaces["outputs"] = _labels(plans[-1])[0]
    return spaces


def stability(in_force: list[tuple[Unit, int]], taps: Mapping[Site, np.ndarray], resamples: int,
              seed: int = 0) -> list[Stability]:
    """The module rule for every (unit, rung) in force, from the original model's tuning activations
    (nothing without resamples)."""
    rng = np.random.default_rng(seed)
    results = []
    if resamples == 0:
        return results
    for unit, rung in in_force:
        norms = {layer.site: column_norms(taps[layer.site]) for layer in unit.layers}
        in_order = [layer.site for layer in sorted(unit.layers, key=lambda layer: layer.index)]
        accepted = unit.structure(rung, norms)
        plans = accepted.plans.values()
        if not all(isinstance(plan, BlockPlan) for plan in plans) or all(len(plan.branches) < 2 for plan in plans):
            continue
        spaces = index_spaces([accepted.plans[site] for site in in_order])
        scores: dict[str, list[float]] = {name: [] for name in spaces}
        for _ in range(resamples):
            drawn = {i: column_norms(taps[i][rng.integers(0, len(taps[i]), len(taps[i]))]) for i in norms}
            plans = unit.structure(rung, drawn).plans
            again = index_spaces([plans[site] for site in in_order])
            for name, labels in spaces.items():
                scores[name].append(adjusted_rand_index(labels, again[name]) if name in again else 0.0)
        interface = np.min([scores[name] for name in ("inputs", "outputs") if name in scores], axis=0)
        mean = float(interface.mean())
        results.append(Stability(unit.name, accepted.label, resamples, round(mean, 4), round(float(interface.min()), 4),
                                 bool(mean >= STABLE_ARI),
                                 {name: round(float(np.mean(v)), 4) for name, v in scores.items() if v}))
    return results
