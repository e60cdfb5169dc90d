"""The channels family: output channels of a Conv removed whole across its channel space (the paper's isolated
nodes in a CNN), the units family's rule on channels.

A unit is a channel space (``feature_space`` on axis 1, coupled: through BatchNormalization, activations,
per-channel constants, pools and depthwise Convs, whose channels go with it): the Convs of one group writing it
(one, or several whose channels a residual Add or a squeeze-excitation gate joins: removed together) and every
Conv reading it. A space that is refused (a Concat, a Reshape, a graph output, a value from outside that no
Conv computes) is left out with its reason, so coupled channels are never split. Channel ``u`` scores as a unit does
(``units.unit_scores``: the energy of its window in every consumer's input, weighed by the evidence). Rungs
keep the live channels (nonzero score; a dead channel is constant on the data, so removing it and moving its
value into the consumers' bias loses nothing), then the best-scoring ``units.SHARES`` of them. Cuts and plans
are the units family's: the producer's rows, each consumer's columns (its channels' windows), refitted by least
squares on the patches with the removed channels' mean in the bias; ``RemoveUnits`` slices the space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from onnx_decomp.search.families.base import Family, SearchSpace, Unit
from onnx_decomp.search.families.units import SHARES, UnitsUnit, unit_scores
from onnx_decomp_passes import feature_space

logger = logging.getLogger(__name__)


@dataclass
class ChannelsUnit(UnitsUnit):
    family = "channels"
    what = "channels"


def shares(scores: np.ndarray) -> list[float]:
    """The live share (when some channel is dead), then the ``SHARES`` below it."""
    live = float(np.mean(scores > 0))
    return [live, *(share for share in SHARES if share < live)] if live < 1 else list(SHARES)


class Channels(Family):
    name = "channels"
    blocks = False

    def units(self, space: SearchSpace) -> list[Unit]:
        network = space.network
        layers = {id(layer.op.node): layer for layer in network.layers}
        ops = {key: layer.op for key, layer in layers.items()}
        units, seen = [], set()
        for producer in (layer for layer in network.layers if layer.conv and layer.site not in seen):
            found = feature_space(producer.op, ops, coupled=True)
            reason = found if isinstance(found, str) else None
            if reason is None and not found.consumers:
                reason = "no Conv reads its channels"
            if reason is None and any(len(op.weight.outputs) > 1 or op.cast is not None
                                      for op in (*found.producers, *found.consumers)):
                reason = "a weight in its space is shared or cast"
            if reason is not None:
                logger.info("channels of %s left as they are: %s", producer.node, reason)
                continue
            producers = [layers[id(op.node)] for op in found.producers]
            consumers = [layers[id(op.node)] for op in found.consumers]
            seen.update(layer.site for layer in producers)
            evidence = space.evidence_of([*producers, *consumers])
            scores = unit_scores(producers, consumers, space.taps, evidence)
            units.append(ChannelsUnit([*producers, *consumers], shares(scores), evidence, scores, len(producers)))
        return units
