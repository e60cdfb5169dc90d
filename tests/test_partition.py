"""Plans from block labels: the components of their support, and the block ids a partition gives them."""

from __future__ import annotations

import numpy as np

from onnx_decomp.planning.coclustering import blocks_plan
from onnx_decomp.planning.partition import Partition
from onnx_decomp_passes import plan_from_support


def test_blocks_plan_equals_the_components_of_its_support(rng):
    for _ in range(5):
        rows, cols = rng.integers(0, 4, 30), rng.integers(0, 5, 20)  # label 4 has columns but no rows
        rows_kept, cols_kept = rng.random(30) < 0.8, rng.random(20) < 0.7
        support = (rows[:, None] == cols[None, :]) & rows_kept[:, None] & cols_kept[None, :]
        fast, slow = blocks_plan(rows, cols, rows_kept, cols_kept), plan_from_support(support)
        assert [(b.rows.tolist(), b.cols.tolist()) for b in fast.branches] == \
            [(b.rows.tolist(), b.cols.tolist()) for b in slow.branches]
        assert sorted(fast.constant_rows.tolist()) == sorted(slow.constant_rows.tolist())


def test_a_chain_partition_plans_every_layer_and_block_ids_survive_relabelling(rng):
    labels = [rng.permutation(np.repeat(np.arange(3), n // 3)) for n in (9, 12, 6)]  # inputs, hidden, outputs
    partition = Partition.of_chain(labels)
    assert list(partition.spaces) == ["inputs", "hidden 1", "outputs"]
    rows_kept = np.ones(12, bool)
    rows_kept[0] = False  # a hidden unit that carries nothing becomes a constant row
    first, second = partition.chain_plans([(rows_kept, None), (None, None)])
    for plan, (reads, writes) in ((first, (labels[0], labels[1])), (second, (labels[1], labels[2]))):
        for branch in plan.branches:
            assert set(writes[branch.rows]) == set(reads[branch.cols]) == {branch.block}
    assert first.constant_rows.tolist() == [0]
    order = rng.permutation(12)  # the feature order permutation folding gives the hidden space
    relabelled = first.relabeled(rows=order)
    for branch in relabelled.branches:
        assert set(labels[1][order[branch.rows]]) == {branch.block}  # each branch keeps its block id
