"""Chain co-clustering (onnx_decomp.planning.coclustering): planted groups come back exactly, blocks stay balanced,
and on the paper's localized scenario a masked fine-tune wins back the dense loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import hidden_blocks
from onnx_decomp.planning.coclustering import balanced_assignment, coclustered_plan, spectral_cocluster
from onnx_decomp.torch import apply_block_mask, finetune_under_mask
from onnx_decomp_models.common import Batches
from onnx_decomp_models.localized import make_task


def planted_chain(rng, groups=4, d=64, h=256, d_out=16, signal=0.4):
    """W1 [h, d], W2 [d_out, h] as localized training leaves them: uniform init noise everywhere (bound
    b = 1/sqrt(fan_in)), plus per group g a rank-one update of size ``signal * b`` over ALL hidden units,
    ``W1 += u_g v_g^T`` (v_g on g's inputs) and ``W2 += p_g u_g^T`` (p_g on g's outputs); every index space
    shuffled. Hidden units are shared by all groups, so no single layer shows the groups; along the chain
    ``u_g . u_g = h`` adds up while ``u_g . u_g'`` and the noise do not."""
    b1, b2 = 1 / np.sqrt(d), 1 / np.sqrt(h)
    w1 = rng.uniform(-b1, b1, (h, d))
    w2 = rng.uniform(-b2, b2, (d_out, h))
    inputs, outputs = np.arange(d) * groups // d, np.arange(d_out) * groups // d_out
    for g in range(groups):
        u = rng.choice([-1.0, 1.0], h)
        w1 += signal * b1 * np.outer(u, rng.choice([-1.0, 1.0], d) * (inputs == g))
        w2 += signal * b2 * np.outer(rng.choice([-1.0, 1.0], d_out) * (outputs == g), u)
    p_in, p_hidden, p_out = rng.permutation(d), rng.permutation(h), rng.permutation(d_out)
    return w1[p_hidden][:, p_in], w2[p_out][:, p_hidden], inputs[p_in], outputs[p_out]


def groups_of(plan_branches, attribute, size):
    labels = np.full(size, -1)
    for label, branch in enumerate(plan_branches):
        labels[getattr(branch, attribute)] = label
    return labels


def test_planted_chain_groups_are_recovered_exactly_where_single_layers_fail(rng):
    w1, w2, inputs, outputs = planted_chain(rng)

    plan1, plan2 = coclustered_plan(w1, w2, 4)

    assert len(plan1.branches) == len(plan2.branches) == 4
    for planted, found in [(inputs, groups_of(plan1.branches, "cols", 64)),
                           (outputs, groups_of(plan2.branches, "rows", 16))]:
        assert adjusted_rand_score(planted, found) == 1.0
        assert {frozenset(np.flatnonzero(found == g)) for g in range(4)} == \
               {frozenset(np.flatnonzero(planted == g)) for g in range(4)}
    # design.md section 7: one layer's |W1|, or |W2| @ |W1|, shows no groups
    for magnitude in (np.abs(w1), np.abs(w2) @ np.abs(w1)):
        assert adjusted_rand_score(inputs, spectral_cocluster(magnitude, 4)[1]) < 0.3


def test_plans_make_independent_sub_networks(rng):
    w1, w2, _, _ = planted_chain(rng, groups=8, signal=0.1)  # weak signal: the cut is approximate

    plan1, plan2 = coclustered_plan(w1, w2, 8)

    assert not plan1.constant_rows.size and not plan2.constant_rows.size
    assert sorted(tuple(b.rows) for b in plan1.branches) == sorted(tuple(b.cols) for b in plan2.branches)
    assert sorted(len(b.rows) for b in plan1.branches) == [32] * 8  # balanced hidden units
    assert sorted(len(b.cols) for b in plan1.branches) == [8] * 8
    assert sorted(len(b.rows) for b in plan2.branches) == [2] * 8
    # under the masks, the outputs of a block depend on the inputs of that block only
    composite = (w2 * plan2.mask()) @ (w1 * plan1.mask())
    by_hidden = {tuple(b.cols): b for b in plan2.branches}
    for first in plan1.branches:
        others = np.setdiff1d(np.arange(64), first.cols)
        assert np.all(composite[np.ix_(by_hidden[tuple(first.rows)].rows, others)] == 0)


def test_spectral_cocluster_finds_hidden_blocks_of_a_block_diagonal_matrix(rng):
    w, _ = hidden_blocks(rng, [(6, 10)] * 5)

    rows, cols = spectral_cocluster(w, 5)

    for row_label in range(5):  # every row reads only the columns of its own cluster
        block_rows = np.flatnonzero(rows == row_label)
        assert np.all(w[np.ix_(block_rows, np.flatnonzero(cols != row_label))] == 0)
    assert np.bincount(rows).tolist() == [6] * 5 and np.bincount(cols).tolist() == [10] * 5


@pytest.mark.parametrize("n, k", [(10, 4), (9, 4), (12, 3), (5, 5), (7, 1)])
def test_balanced_assignment_sizes_and_preferences(rng, n, k):
    labels = balanced_assignment(rng.random((n, k)))
    assert sorted(np.bincount(labels, minlength=k)) == sorted([n // k + (i < n % k) for i in range(k)])
    # with room for everyone, every item gets its favourite
    preference = np.eye(k)[np.arange(n) % k] + 0.01 * rng.random((n, k))
    assert np.array_equal(balanced_assignment(preference), np.arange(n) % k)


def test_bad_shapes_and_k_are_refused(rng):
    with pytest.raises(ValueError, match="W1"):
        coclustered_plan(rng.random((8, 4)), rng.random((3, 7)), 2)
    with pytest.raises(ValueError, match="hidden"):
        coclustered_plan(rng.random((3, 8)), rng.random((8, 3)), 4)


@pytest.mark.slow
def test_localized_scenario_cut_recovers_groups_and_finetune_wins_back_the_loss():
    torch.manual_seed(0)
    sample, input_groups, _ = make_task(np.random.default_rng(0), groups=8, group_in=16, group_out=4)
    (x, y), (x_test, y_test) = sample(4000), [torch.from_numpy(a) for a in sample(1000)]
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 32))
    loss = torch.nn.functional.mse_loss
    finetune_under_mask(model, loss, Batches(x, y, 64), epochs=15)  # no mask applied yet: dense training
    with torch.no_grad():
        dense = float(loss(model(x_test), y_test))

    plan1, plan2 = coclustered_plan(model[0].weight.detach().numpy(), model[2].weight.detach().numpy(), 8)
    mask = apply_block_mask(model, {"0.weight": plan1, "2.weight": plan2})
    with torch.no_grad():
        cut = float(loss(model(x_test), y_test))
    finetune_under_mask(model, loss, Batches(x, y, 64), epochs=5, mask=mask)
    with torch.no_grad():
        tuned = float(loss(model(x_test), y_test))

    assert adjusted_rand_score(input_groups, groups_of(plan1.branches, "cols", 128)) == 1.0
    assert cut > 2 * dense  # the cut alone costs accuracy ...
    assert tuned <= 1.10 * dense  # ... that fine-tuning under the mask wins back
    assert torch.all(model[0].weight[~torch.from_numpy(plan1.mask())] == 0)
