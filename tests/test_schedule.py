"""The annealing schedule on its own (``search.schedule``), on a stub network and gate whose fidelity is the sum
of the losses of the cuts in force: lazy greedy order by MACs saved per fidelity lost, re-measurement of stale
candidates, rollback, patience and deferral."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from onnx_decomp.config import AnnealConfig
from onnx_decomp.decisions import Verdict
from onnx_decomp.search.families import Cut, Structure, Unit
from onnx_decomp.search.schedule import PATIENCE, Annealer
from onnx_decomp_passes import Site

DENSE = 1000  # MACs per layer


@dataclass(frozen=True)
class StubLayer:
    site: Site
    index: int

    @property
    def weight(self) -> str:
        return self.site.weight


@dataclass(frozen=True)
class StubCut(Cut):
    kept: int  # MACs the layer keeps
    loss: float  # what the cut adds to the fidelity metric
    plan: object = None

    def macs(self, layer) -> int:
        return self.kept

    def plain(self, layer, dense):
        return np.array([self.loss]), None  # the "weights" of a cut layer: its loss, read back by the stub gate

    def refit(self, layer, dense, cut, refitter):
        return self.plain(layer, dense)


class StubNetwork:
    def __init__(self, count: int):
        self.layers = [StubLayer(Site("g", f"n{i}", f"W{i}"), i) for i in range(count)]
        self.by_site = {layer.site: layer for layer in self.layers}
        self.dense_macs = DENSE * count

    def macs(self, cuts) -> int:
        return sum(cuts[layer.site].kept if layer.site in cuts else DENSE for layer in self.layers)


class StubGate:
    """The metric of a state is the sum of its cuts' losses; records how often it measured."""

    def __init__(self, network: StubNetwork, tolerance: float):
        self.tolerance, self.measured = tolerance, 0
        self.fold_taps = [{layer.site: None for layer in network.layers}] * 2
        self.dense_taps = self.fold_taps[0]

    def take_start_taps(self):
        return list(self.fold_taps)

    def measure(self, weights, part="tuning") -> float:
        return sum(float(weight[0]) for weight, _ in weights.values())

    def measure_crossed(self, fits) -> float:
        self.measured += 1
        return self.measure(fits[1])

    def passes(self, value: float) -> bool:
        return value <= self.tolerance


@dataclass
class StubUnit(Unit):
    """One layer; rung i is the cut ``ladder[i]``."""

    ladder: tuple = ()
    family = "stub"

    def label(self, rung: int) -> str:
        return f"rung {rung}"

    def structure(self, rung: int, norms) -> Structure:
        return Structure(self.label(rung), {self.layers[0].site: self.ladder[rung]})


def anneal(ladders: dict[int, list[StubCut]], tolerance: float):
    network = StubNetwork(len(ladders))
    gate = StubGate(network, tolerance)
    units = [StubUnit([network.layers[i]], list(range(len(ladder))), {}, tuple(ladder))
             for i, ladder in ladders.items()]
    annealer = Annealer(network, gate, units, AnnealConfig(refit=False), norms={})
    return annealer, annealer.run(), gate


def test_the_best_saving_per_fidelity_lost_is_accepted_first_and_stale_candidates_are_measured_again():
    annealer, steps, _ = anneal({0: [StubCut(500, 0.010)], 1: [StubCut(500, 0.001)]}, tolerance=1.0)
    accepted = [s for s in steps if s.verdict is Verdict.ACCEPTED]
    assert [s.candidate.unit for s in accepted] == ["W1", "W0"]  # same saving, W1 loses ten times less
    # W0 was measured on the dense state, then again on the state with W1's cut in force
    assert [s.candidate.fidelity for s in steps if s.candidate.unit == "W0"] == [pytest.approx(0.010),
                                                                              pytest.approx(0.011)]
    assert annealer.state.macs == 1000 and annealer.state.fidelity == pytest.approx(0.011)


def test_a_step_above_the_tolerance_is_rolled_back_and_the_next_rung_measured():
    ladder = [StubCut(900, 0.001), StubCut(500, 0.5), StubCut(400, 0.02)]
    annealer, steps, _ = anneal({0: ladder}, tolerance=0.05)
    assert [(s.candidate.structure, s.verdict) for s in steps] == [
        ("rung 0", Verdict.ACCEPTED), ("rung 1", Verdict.ROLLED_BACK), ("rung 2", Verdict.ACCEPTED)]
    assert "tolerance 0.05" in steps[1].reason
    assert annealer.state.cuts == {annealer.network.layers[0].site: ladder[2]}


def test_patience_rollbacks_in_a_row_stop_the_unit():
    ladder = [StubCut(900, 0.001)] + [StubCut(800 - 100 * i, 0.5) for i in range(PATIENCE)] + [StubCut(100, 0.0)]
    annealer, steps, gate = anneal({0: ladder}, tolerance=0.05)
    verdicts = [s.verdict for s in steps]
    assert verdicts == [Verdict.ACCEPTED] + [Verdict.ROLLED_BACK] * PATIENCE
    assert "stops" in steps[-1].reason
    assert gate.measured == 1 + PATIENCE  # the last, lossless rung is never measured
    assert annealer.state.macs == 900


def test_a_rung_that_saves_nothing_is_passed_over_and_overtaken_candidates_are_deferred():
    ladders = {0: [StubCut(1000, 0.0), StubCut(200, 0.01)], 1: [StubCut(500, 0.001)]}
    _, steps, _ = anneal(ladders, tolerance=1.0)
    assert all(s.candidate.structure != "rung 0" or s.candidate.unit != "W0" for s in steps)  # saves no MACs
    deferred = [s for s in steps if s.verdict is Verdict.DEFERRED]
    assert deferred and all("saved more per fidelity lost" in s.reason for s in deferred)
    assert [s.candidate.unit for s in deferred] == ["W0"]  # overtaken by W1, then measured again and accepted
    assert [s.candidate.macs for s in steps if s.verdict is Verdict.ACCEPTED] == [1500, 700]
