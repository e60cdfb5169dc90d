"""The heads family: whole attention heads removed, the output projection refitted (like units, FLAP-style).

Units are the attention blocks ``attention.find_attention`` finds (torch's dynamo and legacy exporters and
Hugging Face-style exports: the plain MatMul/Softmax form) whose heads the rewrite can remove
(``onnx_decomp_passes.head_region``: every shape that holds the head count is a constant, or follows the
tensors on its own); any other block is skipped with the reason in ``SearchSpace.notes``, and so is every fused
attention op (``FUSED``): its heads live inside one kernel's packed weights.

Head h scores ``e_h * ||(X_h - mean X_h) W_o[:, h]^T|| / sqrt(rows)``: the output energy it carries through o
around its mean on the original model's tuning activations ``X`` (its mean moves into o's bias when it goes),
weighed by the statistical evidence ``e_h`` (the mean evidence of its q, k and v rows and o columns: init-like
heads weigh little). It is the units family's score with a head's features taken together, their correlations
included. Rungs keep the best-scoring heads: ``units.SHARES`` of them rounded up, each count once, fewer than
all (so the first rung of up to 8 heads removes one).

Cuts: ``SliceCut``s with ``HeadsPlan``s: q, k and v keep the kept heads' rows as they are, o their columns,
refitted by least squares on the kept heads with a free intercept (plain cut: the removed heads' mean moved
into the bias). The structure is coupled. Removing heads also removes their attention products, which the
MACs count (``search.products``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from onnx_decomp.search.families.attention import AttentionBlock, find_attention
from onnx_decomp.search.families.base import Family, Norms, SearchSpace, Structure, Unit
from onnx_decomp.search.families.units import SHARES, SliceCut
from onnx_decomp.search.network import Layer
from onnx_decomp_passes import HeadsPlan, head_region
from onnx_decomp_passes.plan import whole_heads

FUSED = {("com.microsoft", op) for op in ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
                                          "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention",
                                          "SparseAttention")} | {("", "Attention"), ("ai.onnx", "Attention")}


@dataclass
class HeadsUnit(Unit):
    heads: int = 0
    scores: Optional[np.ndarray] = None  # per head, higher is kept longer
    family = "heads"

    @property
    def name(self) -> str:
        return f"{super().name} (heads)"

    def label(self, rung: int) -> str:
        return f"keep {self.rungs[rung]} of {self.heads} heads"

    def structure(self, rung: int, norms: Norms) -> Structure:
        *projections, output = self.layers
        width = output.shape[1] // self.heads
        kept = whole_heads(np.argsort(-self.scores, kind="stable")[:self.rungs[rung]], width)
        cuts = {layer.site: SliceCut(HeadsPlan(*layer.shape, rows=kept, heads=self.heads)) for layer in projections}
        cuts[output.site] = SliceCut(HeadsPlan(*output.shape, cols=kept, heads=self.heads))
        return Structure(self.label(rung), cuts, coupled=True)


def head_scores(layers: list[Layer], heads: int, taps: np.ndarray, evidence: dict) -> np.ndarray:
    """``e_h * ||(X_h - mean X_h) W_o[:, h]^T|| / sqrt(rows)`` of the module rule, from o's input rows ``taps``."""
    *projections, output = layers
    width = output.shape[1] // heads
    centred = taps - taps.mean(0)
    matrix = output.matrix()
    score = np.empty(heads)
    for head in range(heads):
        features = slice(head * width, (head + 1) * width)
        moment = centred[:, features].T @ centred[:, features] / max(len(taps), 1)
        score[head] = math.sqrt(max(float(np.sum((matrix[:, features] @ moment) * matrix[:, features])), 0.0))
    shares = [e.astype(np.float32).reshape(heads, -1).mean(1) for e in
              (evidence.get(layer.site) for layer in projections) if e is not None]
    if evidence.get(output.site) is not None:
        shares.append(evidence[output.site].astype(np.float32).T.reshape(heads, -1).mean(1))
    return score * (np.mean(shares, axis=0) if shares else 1.0)


def rungs(heads: int) -> list[int]:
    """Heads kept per rung (module rule), most first."""
    return sorted({math.ceil(share * heads) for share in SHARES} - {heads}, reverse=True)


class Heads(Family):
    name = "heads"
    blocks = False

    def units(self, space: SearchSpace) -> list[Unit]:
        network = space.network
        space.notes.extend(f"heads: {node.op_type} node {node.name!r} skipped: a fused attention op keeps its "
                           "heads inside one kernel's packed weights" for node in network.proto.graph.node
                           if (node.domain, node.op_type) in FUSED)
        units = []
        for block in find_attention(network.layers, space.shapes):
            units += self._unit(space, block)
        return units

    def _unit(self, space: SearchSpace, block: AttentionBlock) -> list[Unit]:
        layers = [space.network.layers[i] for i in block.layers]
        region = head_region([layer.op for layer in layers[:3]], layers[3].op, block.heads, space.shapes)
        if isinstance(region, str):
            space.notes.append(f"heads: {'+'.join(layer.weight for layer in layers)} skipped: {region}")
            return []
        evidence = space.evidence_of(layers)
        scores = head_scores(layers, block.heads, space.taps[layers[3].site], evidence)
        return [HeadsUnit(layers, rungs(block.heads), evidence, block.heads, scores)]
