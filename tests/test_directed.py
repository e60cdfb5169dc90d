"""The directed view of square operators (onnx_decomp.planning.directed): strong components, levels and weak
components of a planted block-triangular structure hidden by a permutation come back as planted."""

from __future__ import annotations

import numpy as np

from onnx_decomp.planning.directed import directed_structure

SIZES = [6, 8, 5, 7, 4]  # groups 0..4
READS = {0: [], 1: [0], 2: [0, 1], 3: [2], 4: []}  # group -> the groups it reads besides itself
LEVELS = {0: 0, 1: 1, 2: 2, 3: 3, 4: 0}


def planted(rng):
    """S [30, 30]: every group strongly connected inside (a dense block with a cycle through it), group g
    reading READS[g] sparsely, the one index space shuffled by one permutation (rows and columns alike)."""
    group = np.repeat(np.arange(len(SIZES)), SIZES)
    n = len(group)
    s = np.zeros((n, n), bool)
    for g, sources in READS.items():
        members = np.flatnonzero(group == g)
        s[np.ix_(members, members)] = rng.random((len(members),) * 2) < 0.5
        s[members, np.roll(members, 1)] = True  # a cycle: the group is one strong component
        for source in sources:
            s[np.ix_(members, np.flatnonzero(group == source))] = rng.random((len(members), SIZES[source])) < 0.3
    perm = rng.permutation(n)
    return s[np.ix_(perm, perm)], group[perm]


def partition(labels):
    return {frozenset(np.flatnonzero(labels == label).tolist()) for label in np.unique(labels)}


def test_planted_block_triangular_structure_gives_the_expected_components_levels_and_plan(rng):
    support, group = planted(rng)

    found = directed_structure(support)

    assert partition(found.strong) == partition(group)
    assert partition(found.weak) == partition(np.isin(group, [0, 1, 2, 3]))
    for g, level in LEVELS.items():
        assert set(found.levels[group == g].tolist()) == {level}
    # ordered by level, the support is block lower-triangular: nothing reads a later level
    order = found.order()
    permuted, levels = support[np.ix_(order, order)], found.levels[order]
    assert not np.any(permuted & (levels[None, :] > levels[:, None]))
    # one branch per (weak component, level): the planted groups, each reading itself and what it reads
    plan = found.plan
    assert len(plan.branches) == len(SIZES) and plan.constant_rows.size == 0
    for branch in plan.branches:
        (g,) = set(group[branch.rows].tolist())
        assert set(branch.rows.tolist()) == set(np.flatnonzero(group == g).tolist())
        assert set(group[branch.cols].tolist()) == {g, *READS[g]}
    assert np.all(plan.mask()[support])  # the plan keeps every edge of the support


def test_a_dense_square_support_is_one_component_and_a_diagonal_one_falls_apart(rng):
    dense = directed_structure(rng.random((12, 12)) < 0.6)
    assert len(np.unique(dense.strong)) == 1 and len(dense.plan.branches) == 1
    diagonal = directed_structure(np.eye(12, dtype=bool))
    assert len(np.unique(diagonal.weak)) == 12 and len(diagonal.plan.branches) == 12
    assert diagonal.plan.macs == 12 and set(diagonal.levels.tolist()) == {0}
