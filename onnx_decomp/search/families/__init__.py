"""Structure families, registered once here: each makes units of layers planned together, each unit a ladder
of structures (``base``). Adding a family is one module and one line below. The order is the order units are
proposed in (the schedule breaks ties by it)."""

from __future__ import annotations

from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.search.families.attention import Attention
from onnx_decomp.search.families.base import (BlockCut, Cut, Family, Norms, SearchSpace, Structure, Unit,
                                              block_counts)
from onnx_decomp.search.families.chain import Chain
from onnx_decomp.search.families.channels import Channels
from onnx_decomp.search.families.grouped import Grouped
from onnx_decomp.search.families.heads import Heads
from onnx_decomp.search.families.lowrank import LowRank
from onnx_decomp.search.families.single import Single
from onnx_decomp.search.families.square import Square
from onnx_decomp.search.families.units import Units

FAMILIES: dict[str, Family] = {family.name: family
                               for family in (Single(), Chain(), Attention(), Square(), Units(), LowRank(), Heads(),
                                              Channels(), Grouped())}


def build_units(space: SearchSpace) -> list[Unit]:
    """The units of every family the run asks for (``AnnealConfig.families``; None: all, or the block families
    when a block count is asked for), in registry order."""
    config = space.config
    asked = config.families or tuple(name for name, family in FAMILIES.items()
                                     if family.blocks or config.block.blocks is None)
    unknown = sorted(set(asked) - set(FAMILIES))
    if unknown:
        raise UnsupportedConstructError(f"families {unknown} are not registered (known: {', '.join(FAMILIES)})")
    return [unit for name, family in FAMILIES.items() if name in asked for unit in family.units(space)]


__all__ = ["FAMILIES", "build_units", "BlockCut", "Cut", "Family", "Norms", "SearchSpace", "Structure", "Unit",
           "block_counts"]
