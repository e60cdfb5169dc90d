"""The annealing schedule: greedy by MACs saved per unit of fidelity lost, with rollback.

Rules:
- The state is a cut per layer (``families.Cut``) and two sets of weights, one fitted on each tuning fold;
  it starts dense. A candidate is a unit's next rung applied to the state: its layers take the rung's cuts
  (joined to the cuts in force, ``Cut.join``: a layer may lose output channels to one structure and input
  channels to another), refitted on each fold one after another in topological order (each on that fold's activations with the
  earlier ones in force; ``refit=False``: plain cut), and the model's fidelity is measured on the tuning
  samples, each fold under the weights fitted on the other (``FidelityGate.measure_crossed``). A rung that
  saves no MACs over the state is passed over, and so is one that would decide a side of some but not all
  layers of a coupled structure in force (units removed across layers hold together).
- Priority: MACs saved / fidelity lost (lost = candidate fidelity - state fidelity, counted as at least
  ``EPS * tolerance``; ties: more MACs saved first). Lazy greedy (Minoux): every unit's first rung is
  measured; then the best measured candidate is taken. Measured on an older state, it is measured again
  and put back; measured on this state, it is accepted, and its unit's next rung measured at once. The
  feasible candidates an acceptance overtakes are logged as deferred.
- A measurement above the tolerance is a step rolled back: the state stays as it was, the step is logged,
  and the unit's next rung is measured; ``PATIENCE`` rollbacks in a row stop the unit (later rungs are more
  aggressive; one more is tried because block rungs are different partitions, not nested ones: a k=2 cut of
  four natural blocks can split them where the k=4 cut fits), one stops a unit whose rungs are nested.
- Memory: only the best queued candidate keeps its refitted weights; another one that reaches the top
  on the current state is refitted again (deterministically) before it is accepted. A unit whose ladder
  is done drops its cached products. On an acceptance the old state's fits and activations go before the new
  state's activations are made.
- Stop when no candidate is left. ``final_refit`` then fits the final structure on the whole tuning part at
  once: every cut layer on the activations reaching it with the search's last fits in force (both folds, as
  made at the last acceptance: no further run), so each layer sees what every other cut left, not the model
  as it was when its own step was taken.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from onnx_decomp.config import AnnealConfig
from onnx_decomp.decisions import Step, StructureCandidate, Verdict
from onnx_decomp.search.families import Cut, Norms, Structure, Unit
from onnx_decomp.search.fidelity import FidelityGate
from onnx_decomp.search.network import Network, Stored, Weights
from onnx_decomp.search.refit import Refitter
from onnx_decomp_passes import Site

logger = logging.getLogger(__name__)

EPS = 1e-3
PATIENCE = 2
Fits = tuple[dict[Site, Stored], dict[Site, Stored]]  # weights fitted on tuning fold 0, on fold 1
Taps = dict[Site, np.ndarray]  # layer site -> activation rows


@dataclass
class State:
    cuts: dict[Site, Cut] = field(default_factory=dict)  # layer site -> cut in force
    fits: Fits = field(default_factory=lambda: ({}, {}))
    fidelity: float = 0.0
    macs: int = 0
    version: int = 0
    origin: dict[Site, tuple[Unit, int]] = field(default_factory=dict)  # layer site -> (unit, rung) cutting it


@dataclass
class Measured:
    """A candidate measured on state ``version``, waiting in the queue."""

    sequence: int
    unit: Unit
    rung: int
    version: int
    candidate: StructureCandidate
    fits: Fits
    structure: Structure
    misses: int = 0  # rollbacks in a row of its unit just before it

    def __lt__(self, other: "Measured") -> bool:
        return self.sequence < other.sequence


def refit_in_order(network: Network, refitter: Refitter, cuts: dict[Site, Cut], weights: Weights, dense: Taps,
                   taps: Taps, activations) -> dict[Site, Stored]:
    """``cuts`` refitted in topological order over ``weights``: the first on ``taps``, each later one on
    ``activations(weights so far)``, all against the original's ``dense`` rows (a cut that
    ``keeps_what_is_read`` changes nothing the later cuts read: no new activations after it)."""
    weights, changed = dict(weights), False
    for site in sorted(cuts, key=lambda s: network.by_site[s].index):
        if changed:
            taps = activations(weights)
        weights[site] = cuts[site].refit(network.by_site[site], dense[site], taps[site], refitter)
        changed = changed or not cuts[site].keeps_what_is_read
    return weights


class Annealer:
    """Runs the module rules over ``units`` and keeps every step (``steps``) and the final ``state``."""

    def __init__(self, network: Network, gate: FidelityGate, units: list[Unit], config: AnnealConfig,
                 norms: Norms):
        self.network, self.gate, self.units, self.config, self.norms = network, gate, units, config, norms
        self.state = State(fidelity=gate.measure({}), macs=network.dense_macs)
        self.taps = gate.take_start_taps()  # per fold, activations at every layer with the state's fit in force
        self.steps: list[tuple[int, Step]] = []
        self._sequence = 0
        self._structures: dict[tuple[int, int], Structure] = {}
        self._progress = None
        self.refit = Refitter(config.ridge, config.seed)

    def final_refit(self, cuts: dict[Site, Cut]) -> dict[Site, Stored]:
        """``cuts`` fitted on the whole tuning part (module rule)."""
        taps = self.gate.joined(self.taps)
        return {site: cut.refit(self.network.by_site[site], self.gate.dense_taps[site], taps[site], self.refit)
                for site, cut in cuts.items()}

    def plain(self, cuts: dict[Site, Cut]) -> dict[Site, Stored]:
        """``cuts`` applied without refitting."""
        return {site: cut.plain(self.network.by_site[site], self.gate.dense_taps[site])
                for site, cut in cuts.items()}

    def _apply(self, structure: Structure) -> Fits:
        """The state's fits with ``structure`` cut in: refitted on each fold, or plainly cut."""
        if not self.config.refit:
            cuts = self.plain(structure.cuts)
            return {**self.state.fits[0], **cuts}, {**self.state.fits[1], **cuts}
        gate = self.gate
        return tuple(refit_in_order(self.network, self.refit, structure.cuts, self.state.fits[fold],
                                    gate.fold_taps[fold], self.taps[fold],
                                    lambda weights, fold=fold: gate.fold_activations(fold, weights))
                     for fold in (0, 1))

    def _evaluate(self, structure: Structure) -> tuple[Fits, float]:
        """The state's fits with ``structure`` cut in (``_apply``) and their crossed fidelity."""
        fits = self._apply(structure)
        return fits, self.gate.measure_crossed(fits)

    def _retap(self) -> None:
        """Every layer's activations per fold with the state's fits in force (the old ones let go first)."""
        self.taps = [{}, {}]
        for fold in (0, 1):
            self.taps[fold] = self.gate.fold_activations(fold, self.state.fits[fold])

    def _structure(self, unit: Unit, rung: int) -> Structure:
        key = (id(unit), rung)
        if key not in self._structures:
            self._structures[key] = unit.structure(rung, self.norms)
        return self._structures[key]

    def _measure(self, unit: Unit, rung: int, misses: int = 0) -> Optional[Measured]:
        """The first rung from ``rung`` on that saves MACs, measured on the state (None: ladder done)."""
        while rung < len(unit.rungs):
            planned = self._structure(unit, rung)
            structure = self._joined(planned)
            macs = self.network.macs({**self.state.cuts, **structure.cuts})
            if macs < self.state.macs and not self._splits(planned):
                fits, fidelity = self._evaluate(structure)
                candidate = StructureCandidate(unit.name, structure.label, structure.plans, macs, fidelity)
                self._sequence += 1
                self._progress.update()
                self._progress.set_postfix_str(f"{unit.name} {structure.label}: {fidelity:.4g}")
                return Measured(self._sequence, unit, rung, self.state.version, candidate, fits, structure, misses)
            rung += 1
        unit.release()
        return None

    def _joined(self, structure: Structure) -> Structure:
        """``structure`` with each cut joined to the cut in force on its layer (``Cut.join``)."""
        held = self.state.cuts
        return replace(structure, cuts={site: cut.join(held[site]) if site in held else cut
                                        for site, cut in structure.cuts.items()})

    def _splits(self, structure: Structure) -> bool:
        """Whether ``structure`` would replace some, not all, cuts of a coupled structure in force: decide a side
        of one of its layers that it decides (``Cut.sides``) without taking over all its layers."""
        held_structures = {(id(unit), rung): (unit, rung) for unit, rung in self.state.origin.values()}
        for unit, rung in held_structures.values():
            held = self._structure(unit, rung)
            if held.coupled and not set(held.cuts) <= set(structure.cuts) and any(
                    cut.sides & held.cuts[site].sides for site, cut in structure.cuts.items() if site in held.cuts):
                return True
        return False

    def _priority(self, measured: Measured) -> tuple[float, int]:
        saved = self.state.macs - measured.candidate.macs
        lost = measured.candidate.fidelity - self.state.fidelity
        return -saved / max(lost, EPS * self.gate.tolerance, 1e-300), -saved

    def _log(self, measured: Measured, verdict: Verdict, reason: str = "") -> None:
        self.steps.append((measured.sequence, Step(measured.candidate, verdict, reason)))

    def _queue(self, queue: list, measured: Optional[Measured]) -> None:
        """Queue a feasible measurement (only the best queued one keeps its weights); log a rolled-back one
        and go on to its unit's next rung (module rules)."""
        if measured is None:
            return
        if self.gate.passes(measured.candidate.fidelity):
            entry = (*self._priority(measured), measured)
            holder = next((e for e in queue if e[-1].fits[0] or e[-1].fits[1]), None)
            if holder is not None and holder < entry:
                measured.fits = ({}, {})
            elif holder is not None:
                holder[-1].fits = ({}, {})
            heapq.heappush(queue, entry)
            return
        stops = measured.misses + 1 >= (1 if measured.unit.nested else PATIENCE)
        self._log(measured, Verdict.ROLLED_BACK, f"{self.config.metric} {measured.candidate.fidelity:.4g} > "
                  f"tolerance {self.gate.tolerance:g}" + (f"; {measured.unit.name} stops" if stops else ""))
        if stops:
            measured.unit.release()
        else:
            self._queue(queue, self._measure(measured.unit, measured.rung + 1, measured.misses + 1))

    def _accept(self, measured: Measured, queue: list) -> None:
        """``measured`` becomes the state; the old state's fits go before the new state's activations are
        made."""
        for *_, waiting in queue:
            if waiting.version == self.state.version:
                self._log(waiting, Verdict.DEFERRED, f"within tolerance; {measured.unit.name} "
                          f"{measured.candidate.structure} saved more per fidelity lost")
            waiting.fits = ({}, {})  # stale from now on: measured again before it can be accepted
        origin = {s: o for s, o in self.state.origin.items() if s not in measured.structure.cuts}
        origin.update({s: (measured.unit, measured.rung) for s in measured.structure.cuts})
        self.state = State({**self.state.cuts, **measured.structure.cuts}, measured.fits,
                           measured.candidate.fidelity, measured.candidate.macs, self.state.version + 1, origin)
        if self.config.refit:
            self._retap()
        self._log(measured, Verdict.ACCEPTED)
        logger.info("accepted %s %s: %d MACs, %s %.4g", measured.unit.name, measured.candidate.structure,
                    measured.candidate.macs, self.config.metric, measured.candidate.fidelity)

    def run(self) -> list[Step]:
        """Anneal (module rules); the steps in the order they were measured."""
        queue: list = []
        with tqdm(desc="annealing", unit="step", disable=None, leave=False) as self._progress:
            for unit in self.units:
                self._queue(queue, self._measure(unit, 0))
            while queue:
                *_, best = heapq.heappop(queue)
                if best.version != self.state.version:
                    self._queue(queue, self._measure(best.unit, best.rung, best.misses))
                    continue
                if best.structure.cuts and not (best.fits[0] or best.fits[1]):
                    best.fits = self._apply(best.structure)  # dropped to save memory: the same refit again
                self._accept(best, queue)
                self._queue(queue, self._measure(best.unit, best.rung + 1))
        return [step for _, step in sorted(self.steps, key=lambda item: item[0])]

    def in_force(self) -> list[tuple[Unit, int]]:
        """The (unit, rung) of every accepted structure whose plans are all still in force."""
        found = {}
        for unit, rung in self.state.origin.values():
            found[(id(unit), rung)] = (unit, rung)
        return [(unit, rung) for unit, rung in found.values()
                if all(self.state.origin.get(layer.site, (None, None))[0] is unit for layer in unit.layers)]
