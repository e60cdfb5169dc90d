"""One identity for a weight where it is used: the graph, the node that reads it, and the weight's name.

Passes, annealing, reports and the torch side all key plans by ``Site``. Node names are unique across the
model once it is normalised (``normalize.UniqueNodeNames``) and a node reads one weight, so a site is the node
where it lives: two sites are the same when graph and node are, whatever the weight is called now (permutation
folding gives a weight a new tensor); a weight read by two nodes has two sites.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METADATA_NODE, METADATA_WEIGHT, METADATA_BLOCK = "onnx_decomp.node", "onnx_decomp.weight", "onnx_decomp.block"


@dataclass(frozen=True, order=True)
class Site:
    graph: str
    node: str
    weight: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.node} ({self.weight})"

    def metadata(self) -> dict[str, str]:
        """What an emitted node records of the site it replaces (``metadata_props``)."""
        return {METADATA_NODE: self.node, METADATA_WEIGHT: self.weight}
