"""Head-aligned cuts of multi-head attention (onnx_decomp.planning.attention) on planted weights: groups of
heads that read and write their own features come back as planted, and the plans cut whole heads
consistently. On an exported transformer: tests/test_attention_transformer.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_decomp.planning.attention import head_groups
from onnx_decomp.search.stability import adjusted_rand_index

HEADS, DIM, D = 4, 8, 32


def planted_attention(rng, noise=0.02):
    """q, k, v [H*dh, d] and o [d, H*dh] where heads {0, 2} read and write features A and heads {1, 3}
    features B (A, B: a shuffled half of the d features each), plus small noise everywhere."""
    features = rng.permutation(np.repeat([0, 1], D // 2))
    heads = np.array([0, 1, 0, 1])
    rows = np.repeat(heads, DIM)
    block = rows[:, None] == features[None, :]
    projections = [np.where(block, rng.normal(0, 1, block.shape), rng.normal(0, noise, block.shape))
                   for _ in range(3)]
    output = np.where(block.T, rng.normal(0, 1, block.T.shape), rng.normal(0, noise, block.T.shape))
    return projections, output, heads, features


def test_planted_head_groups_come_back_and_plans_cut_whole_heads_consistently(rng):
    projections, output, heads, features = planted_attention(rng)

    groups = head_groups(projections, output, HEADS, 2, seed=0)

    assert adjusted_rand_index(groups.heads, heads) == 1.0
    assert adjusted_rand_index(groups.inputs, features) == 1.0
    assert adjusted_rand_index(groups.outputs, features) == 1.0
    q, k, v, o = groups.plans(DIM)
    assert q is k is v and len(q.branches) == 2 and len(o.branches) == 2
    for branch in q.branches:
        assert len(branch.rows) % DIM == 0 and set(branch.rows // DIM) == \
            {h for h in range(HEADS) if set(range(h * DIM, (h + 1) * DIM)) <= set(branch.rows)}
    assert {tuple(b.rows) for b in q.branches} == {tuple(b.cols) for b in o.branches}  # o reads its heads
    assert sorted(len(b.cols) for b in q.branches) == [D // 2, D // 2]  # balanced inputs
    kept = [np.abs(p[q.mask()]).sum() / np.abs(p).sum() for p in projections]
    assert min(kept) > 0.95  # the planted blocks are what stays


def test_head_count_bounds_the_groups_and_shapes_must_agree(rng):
    projections, output, _, _ = planted_attention(rng)
    with pytest.raises(ValueError, match="must lie in"):
        head_groups(projections, output, HEADS, HEADS + 1)
    with pytest.raises(ValueError, match="do not split"):
        head_groups(projections, output, 3, 2)
    one = head_groups(projections, output, HEADS, 1)
    assert len(one.plans(DIM)[0].branches) == 1
