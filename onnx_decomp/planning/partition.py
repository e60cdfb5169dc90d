"""A partition of the index spaces along a unit of layers: one group label per index, per space.

A unit's layers read and write named index spaces (a chain: ``inputs``, ``hidden 1``, ..., ``outputs``; an
attention block: ``inputs``, ``heads`` (every projection row), ``outputs``). Labels are block ids in
``[0, k)``. The plan of a layer that reads space ``a`` and writes space ``b`` keeps, for every block, the
rows labelled so in ``b`` times the columns labelled so in ``a`` (``coclustering.blocks_plan``), leaving out
rows and columns not kept; its branches carry the block ids, which no relabelling of the features changes, so
the sub-network a branch belongs to is known from planning to the written model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from onnx_decomp.planning.coclustering import blocks_plan
from onnx_decomp_passes import BlockPlan


@dataclass(frozen=True)
class Partition:
    spaces: Mapping[str, np.ndarray]  # space name -> block id of every index

    @classmethod
    def of_chain(cls, labels: Sequence[np.ndarray]) -> "Partition":
        """Spaces of a chain from its labels, inputs first, outputs last."""
        names = ["inputs", *(f"hidden {i}" for i in range(1, len(labels) - 1)), "outputs"]
        return cls(dict(zip(names, labels)))

    def plan(self, reads: str, writes: str, rows_kept: Optional[np.ndarray] = None,
             cols_kept: Optional[np.ndarray] = None) -> BlockPlan:
        """The plan of a layer reading space ``reads`` and writing space ``writes`` (module rule)."""
        return blocks_plan(self.spaces[writes], self.spaces[reads], rows_kept, cols_kept)

    def chain_plans(self, kept: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[BlockPlan]:
        """The plans of a chain's layers in order, each with its (rows kept, columns kept)."""
        names = list(self.spaces)
        return [self.plan(reads, writes, *masks) for reads, writes, masks in zip(names, names[1:], kept)]
