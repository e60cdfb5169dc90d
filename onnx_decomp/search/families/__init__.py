"""Structure families, registered once here: each makes units of layers planned together, each unit a ladder
of structures (``base``). Adding a family is one module and one line below. The order is the order units are
proposed in (the schedule breaks ties by it)."""

from __future__ import annotations

from onnx_decomp.search.families.attention import Attention
from onnx_decomp.search.families.base import (BlockCut, Cut, Family, Norms, SearchSpace, Structure, Unit,
                                              block_counts)
from onnx_decomp.search.families.chain import Chain
from onnx_decomp.search.families.single import Single
from onnx_decomp.search.families.square import Square

FAMILIES: dict[str, Family] = {family.name: family for family in (Single(), Chain(), Attention(), Square())}


def build_units(space: SearchSpace) -> list[Unit]:
    """Every family's units, in registry order."""
    return [unit for family in FAMILIES.values() for unit in family.units(space)]


__all__ = ["FAMILIES", "build_units", "BlockCut", "Cut", "Family", "Norms", "SearchSpace", "Structure", "Unit",
           "block_counts"]
