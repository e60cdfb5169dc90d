"""apply_block_mask and finetune_under_mask: masked entries are zero at once, stay exactly zero through
training (hooks, re-enforcement), biases are kept, and the exported ONNX weights are exactly block-sparse."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import numpy_helper

from onnx_decomp.torch import apply_block_mask, export, finetune_under_mask
from onnx_decomp_passes import BlockPlan, Branch, Layout, find_weighted_ops, plan_from_support


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24),
                               torch.nn.ReLU(), torch.nn.Linear(24, 3))


def shuffled_plan(rng, n_out, n_in, blocks, constant_rows=0):
    """``blocks`` branches over shuffled rows and columns; the last ``constant_rows`` rows read nothing."""
    rows, cols = rng.permutation(n_out), rng.permutation(n_in)
    live = np.array_split(rows[:n_out - constant_rows], blocks)
    return BlockPlan(n_out, n_in, tuple(Branch(r, c) for r, c in zip(live, np.array_split(cols, blocks))),
                     rows[n_out - constant_rows:])


def batches(seed=0, n=256, features=12, classes=3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def test_mask_zeroes_at_once_and_finetune_keeps_zeros_and_biases(rng):
    model = mlp()
    plan = shuffled_plan(rng, 24, 24, blocks=4, constant_rows=2)
    keep = torch.from_numpy(plan.mask())
    before = model[2].weight.detach().clone()
    bias_before = model[2].bias.detach().clone()

    mask = apply_block_mask(model, {"2.weight": plan})

    weight = model[2].weight.detach()
    assert torch.all(weight[~keep] == 0) and torch.equal(weight[keep], before[keep])
    assert torch.equal(model[2].bias.detach(), bias_before)
    losses = finetune_under_mask(model, torch.nn.functional.cross_entropy, batches(), epochs=3, lr=1e-2,
                                 mask=mask)
    assert len(losses) == 3 and losses[-1] < losses[0]
    weight = model[2].weight.detach()
    assert torch.all(weight[~keep] == 0)  # exactly zero, not small
    assert (weight[keep] != before[keep]).float().mean() > 0.5  # the blocks trained (dead units aside)
    assert not torch.equal(model[2].bias.detach()[plan.constant_rows], bias_before[plan.constant_rows])


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
    lambda params: torch.optim.AdamW(params, lr=1e-2),
    lambda params: torch.optim.RMSprop(params, lr=1e-3),
], ids=["sgd", "adam", "adamw", "rmsprop"])
def test_hooks_alone_keep_zeros_in_a_users_own_loop(rng, make_optimizer):
    model = mlp()
    plan = shuffled_plan(rng, 24, 24, blocks=3)
    apply_block_mask(model, {"2.weight": plan})
    optimizer = make_optimizer(model.parameters())  # created after the mask: its state starts at zero
    for x, y in batches() * 2:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert torch.all(model[2].weight.detach()[~torch.from_numpy(plan.mask())] == 0)


def test_stale_optimizer_state_is_overruled_by_enforcement(rng):
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    finetune_under_mask(model, torch.nn.functional.cross_entropy, batches(), epochs=1, optimizer=optimizer)
    plan = shuffled_plan(rng, 24, 24, blocks=4)
    keep = torch.from_numpy(plan.mask())

    mask = apply_block_mask(model, {"2.weight": plan})
    finetune_under_mask(model, torch.nn.functional.cross_entropy, batches(), epochs=1, optimizer=optimizer)
    assert torch.any(model[2].weight.detach()[~keep] != 0)  # Adam's momentum moves them: hooks alone fail
    finetune_under_mask(model, torch.nn.functional.cross_entropy, batches(), epochs=1, optimizer=optimizer,
                        mask=mask)
    assert torch.all(model[2].weight.detach()[~keep] == 0)
    mask.remove()
    finetune_under_mask(model, torch.nn.functional.cross_entropy, batches(), epochs=1)
    assert (model[2].weight.detach()[~keep] != 0).float().mean() > 0.5  # hooks gone: dense again


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_exported_weights_are_exactly_block_sparse(tmp_path, rng, dynamo):
    model = mlp()
    plans = {"0.weight": shuffled_plan(rng, 24, 12, blocks=3), "2.weight": shuffled_plan(rng, 24, 24, blocks=4),
             "4.weight": torch.from_numpy(shuffled_plan(rng, 3, 24, blocks=3).mask())}  # a Boolean tensor works too
    mask = apply_block_mask(model, plans)
    finetune_under_mask(model, torch.nn.functional.cross_entropy, batches(), epochs=2, mask=mask)

    exported = export(model, (torch.randn(2, 12),), tmp_path / "model.onnx", dynamo=dynamo)

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(exported.path)).graph.initializer}
    for name, planned_blocks in [("0.weight", 3), ("2.weight", 4), ("4.weight", 3)]:
        w = weights[name]  # Gemm(transB=1): [n_out, n_in], as the plan
        keep = plans[name].mask() if isinstance(plans[name], BlockPlan) else plans[name].numpy()
        assert np.all(w[~keep] == 0)
        assert len(plan_from_support(w != 0).branches) >= planned_blocks


class RightMultiply(torch.nn.Module):
    """``x @ P`` with ``P [in, out]``: exported as MatMul holding P itself, i.e. W.T."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.p = torch.nn.Parameter(torch.randn(n_in, n_out) / n_in ** 0.5)

    def forward(self, x):
        return x @ self.p


class Sequence3d(torch.nn.Module):
    """3-D activations, so both weights become MatMul: the Linear one transposed and renamed by the
    exporter, the right-multiplied one stored as is."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(12, 24)
        self.second = RightMultiply(24, 6)

    def forward(self, x):
        return self.second(torch.relu(self.first(x))).mean(1)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_plans_keyed_by_onnx_initializer_follow_the_weight_layout(tmp_path, rng, dynamo):
    torch.manual_seed(0)
    model = Sequence3d()
    exported = export(model, (torch.randn(2, 5, 12),), tmp_path / "model.onnx", dynamo=dynamo)
    ops, _ = find_weighted_ops(gs.import_onnx(onnx.load(str(exported.path))))
    by_parameter = {exported.bindings[op.weight.name][0].parameter: op for op in ops}
    first, second = by_parameter["first.weight"], by_parameter["second.p"]
    assert first.weight.name != "first.weight" and first.layout is Layout.IN_OUT  # MatMul: W.T, renamed
    plan_first, plan_second = shuffled_plan(rng, 24, 12, blocks=3), shuffled_plan(rng, 6, 24, blocks=2)

    mask = apply_block_mask(model, {first.weight.name: plan_first, second.weight.name: plan_second},
                            onnx_model=exported.path)
    finetune_under_mask(model, lambda out, y: ((out - y) ** 2).mean(),
                        [(torch.randn(8, 5, 12), torch.randn(8, 6)) for _ in range(4)], epochs=2, mask=mask)

    assert torch.all(model.first.weight.detach()[~torch.from_numpy(plan_first.mask())] == 0)  # W itself
    assert torch.all(model.second.p.detach().T[~torch.from_numpy(plan_second.mask())] == 0)  # P = W.T
    again = export(model, (torch.randn(2, 5, 12),), tmp_path / "again.onnx", dynamo=dynamo)
    ops, _ = find_weighted_ops(gs.import_onnx(onnx.load(str(again.path))))
    for op in ops:
        plan = plan_first if op.shape == (24, 12) else plan_second
        assert np.all(op.matrix()[~plan.mask()] == 0)
        assert len(plan_from_support(op.matrix() != 0).branches) >= len(plan.branches)


@pytest.mark.slow
def test_unknown_keys_and_wrong_shapes_are_refused(tmp_path, rng):
    model = mlp()
    with pytest.raises(ValueError, match="onnx_model="):
        apply_block_mask(model, {"val_3": shuffled_plan(rng, 24, 24, 2)})
    with pytest.raises(ValueError, match="shape"):
        apply_block_mask(model, {"2.weight": shuffled_plan(rng, 24, 12, 2)})
    exported = export(model, (torch.randn(2, 12),), tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="neither"):
        apply_block_mask(model, {"no_such_weight": shuffled_plan(rng, 24, 24, 2)}, onnx_model=exported.path)
    assert torch.all(model[2].weight != 0)  # nothing was masked
