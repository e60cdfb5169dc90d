"""One identity for a weight where it is used: the graph, the node that reads it, and the weight's name.

Passes, annealing, reports and the torch side all key plans by ``Site``. Names are unique across the model
once it is normalised (node names by ``normalize.UniqueNodeNames``, tensor names across scopes by the loader),
so a site is stable from planning to the written model; a weight read by two nodes has two sites.
"""

from __future__ import annotations

from dataclasses import dataclass

METADATA_NODE, METADATA_WEIGHT, METADATA_BLOCK = "onnx_decomp.node", "onnx_decomp.weight", "onnx_decomp.block"


@dataclass(frozen=True, order=True)
class Site:
    graph: str
    node: str
    weight: str

    def __str__(self) -> str:
        return f"{self.node} ({self.weight})"

    def metadata(self) -> dict[str, str]:
        """What an emitted node records of the site it replaces (``metadata_props``)."""
        return {METADATA_NODE: self.node, METADATA_WEIGHT: self.weight}
