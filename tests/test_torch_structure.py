"""apply_structure: the structure annealing found, taken on by the PyTorch module, for every family. A tiny CharLM
with planted dead FFN units and a planted low-rank output projection is annealed (one family at a time, real
ONNX Runtime); the module takes on the plans, exports with the rewrite's MatMul shapes (two products per
low-rank weight, smaller weights for removed units, dense block-sparse weights for block masks) and equals the
rewritten and the masked models in ONNX Runtime before fine-tuning; fine-tuning changes the weights and keeps
the structure. Per-feature parameters between removed units' layers are sliced with them; what cannot be
applied is refused before the module changes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from torch import nn

import onnx_decomp
from onnx_decomp import AnnealConfig, GateConfig
from onnx_decomp.io.graph import import_graph
from onnx_decomp.torch import apply_structure, export, finetune_under_mask
from onnx_decomp_models.char_lm import CharLM, next_char_loss
from onnx_decomp_passes import BlockPlan, LowRankPlan, SlicePlan, find_weighted_ops
from conftest import run

pytestmark = pytest.mark.slow
D, FFN, CONTEXT, VOCAB = 32, 64, 16, 20
FAMILIES = {SlicePlan: ("units",), LowRankPlan: ("lowrank",), BlockPlan: ("single", "chain", "attention")}


def planted_lm() -> CharLM:
    """One block; half the FFN units write a thousandth of the rest; the output projection is rank 2 plus noise."""
    torch.manual_seed(0)
    model = CharLM(d_model=D, heads=4, ffn=FFN, layers=1, context=CONTEXT, vocab=VOCAB)
    block = model.blocks[0]
    with torch.no_grad():
        block.down.weight[:, :FFN // 2] *= 1e-3
        block.o.weight.copy_(0.3 * torch.randn(D, 2) @ torch.randn(2, D) + 1e-3 * block.o.weight)
    return model


def weight_shapes(model: onnx.ModelProto) -> list[tuple[int, int]]:
    return sorted(op.shape for op in find_weighted_ops(gs.import_onnx(model))[0])


def export_lm(model: nn.Module, path) -> onnx.ModelProto:
    export(model, (torch.zeros(2, CONTEXT, dtype=torch.int64),), path, input_names=["tokens"], output_names=["logits"])
    return onnx.load(str(path))


def batches(rng, steps: int = 4):
    windows = torch.from_numpy(rng.integers(0, VOCAB, (steps, 8, CONTEXT + 1)))
    return [(w[:, :-1], w[:, 1:]) for w in windows]


@pytest.mark.parametrize("kind", list(FAMILIES), ids=lambda k: k.__name__)
def test_an_annealed_structure_is_taken_on_exported_with_the_rewrites_shapes_and_kept_by_fine_tuning(
        kind, tmp_path, rng):
    model = planted_lm()
    path = tmp_path / "model.onnx"
    dense = export_lm(model, path)
    calib = {"tokens": rng.integers(0, VOCAB, (256, CONTEXT))}
    rewritten, report = onnx_decomp.anneal(str(path), calib, tolerance=0.05, gate=GateConfig("flops"),
                                           config=AnnealConfig(families=FAMILIES[kind], bootstrap=0))
    assert report.plans and all(isinstance(plan, kind) for plan in report.plans.values())

    structure = apply_structure(model, report, onnx_model=path)

    structured = export_lm(model, tmp_path / "structured.onnx")
    if kind is BlockPlan:  # dense shapes, zero outside the blocks; the exact rewrite splits them later
        assert weight_shapes(structured) == weight_shapes(dense) and structure.mask.masks
        assert not structure.factorised and not structure.sliced
    else:
        assert weight_shapes(structured) == weight_shapes(rewritten) != weight_shapes(dense)
    if kind is LowRankPlan:
        assert structure.factorised["blocks.0.o"] == 2
    if kind is SlicePlan:
        units = structure.sliced["blocks.0.up"][0]
        assert structure.sliced == {"blocks.0.up": (units, D), "blocks.0.down": (D, units)} and units <= FFN // 2
    tokens = rng.integers(0, VOCAB, (5, CONTEXT))
    (expected,) = run(rewritten, {"tokens": tokens})
    np.testing.assert_allclose(run(structured, {"tokens": tokens})[0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run(report.masked, {"tokens": tokens})[0], expected, rtol=1e-4, atol=1e-4)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    finetune_under_mask(model, next_char_loss, batches(rng), epochs=1, lr=1e-2, mask=structure)

    after = dict(model.named_parameters())
    assert {n: p.shape for n, p in after.items()} == {n: p.shape for n, p in before.items()}
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert any(n.startswith("blocks.0.up") for n in changed) and any(n.startswith("blocks.0.o") for n in changed)
    for name, keep in structure.mask.masks.items():
        assert torch.all(after[name].detach()[~keep] == 0)
    assert weight_shapes(export_lm(model, tmp_path / "finetuned.onnx")) == weight_shapes(structured)


class Scale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, width))

    def forward(self, x):
        return x * self.scale


def mlp(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), middle, nn.ReLU(), nn.Linear(16, 4))


def unit_plans(model: nn.Sequential, path, kept: np.ndarray):
    """The first Linear keeps units ``kept``, the last reads only them; their other columns set to zero first,
    so that removing them changes nothing; the model exported to ``path``; the plans by site."""
    with torch.no_grad():
        model[3].weight[:, np.setdiff1d(np.arange(16), kept)] = 0
    export(model, (torch.zeros(2, 8),), path)
    sites = {op.weight.name: op.site for op in find_weighted_ops(import_graph(onnx.load(str(path))))[0]}
    return {sites["0.weight"]: SlicePlan(16, 8, rows=kept), sites["3.weight"]: SlicePlan(4, 16, cols=kept)}


def test_per_feature_parameters_between_the_layers_are_sliced_with_the_units(tmp_path, rng):
    model, kept = mlp(Scale(16)), np.sort(rng.choice(16, 6, replace=False))
    plans = unit_plans(model, tmp_path / "model.onnx", kept)
    x = torch.randn(5, 8)
    with torch.no_grad():
        expected = model(x)

    structure = apply_structure(model, plans, masked=tmp_path / "model.onnx")

    assert structure.sliced == {"0": (6, 8), "3": (4, 6)} and model[1].scale.shape == (6,)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    structured = onnx.load(str(export(model, (x,), tmp_path / "structured.onnx").path))
    assert weight_shapes(structured) == [(4, 6), (6, 8)]
    np.testing.assert_allclose(run(structured, {"input": x.numpy()})[0], expected.numpy(), rtol=1e-5, atol=1e-5)


class Twice(nn.Module):
    """One Linear applied twice: two sites read one weight."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class Buffered(Scale):
    def __init__(self, width: int):
        super().__init__(width)
        del self.scale
        self.register_buffer("scale", torch.linspace(0.5, 2.0, width))


@pytest.mark.parametrize("case, message", [
    ("layernorm", "is not a per-feature node"),
    ("buffer", "is no parameter of the module"),
    ("other weights", "bound to no parameter"),
    ("consumer keeps its columns", "does not drop the same units"),
    ("shared linear", "read by 2 nodes"),
], ids=["layernorm", "buffer", "other-weights", "consumer-keeps-columns", "shared-linear"])
def test_what_cannot_be_applied_is_refused_before_the_module_changes(tmp_path, rng, case, message):
    path, kept = tmp_path / "model.onnx", np.arange(6)
    if case == "shared linear":
        torch.manual_seed(0)
        model = Twice()
        export(model, (torch.zeros(2, 8),), path)
        sites = [op.site for op in find_weighted_ops(import_graph(onnx.load(str(path))))[0]]
        assert len(sites) == 2 and sites[0].weight == sites[1].weight
        plans = {sites[0]: LowRankPlan(8, 8, 2)}
    else:
        model = mlp({"layernorm": nn.LayerNorm(16), "buffer": Buffered(16)}.get(case, nn.Identity()))
        plans = unit_plans(model, path, kept)
        if case == "consumer keeps its columns":
            plans = {site: plan for site, plan in plans.items() if plan.rows is not None}
        if case == "other weights":
            with torch.no_grad():
                model[0].weight.mul_(2)
    state = {name: value.clone() for name, value in model.state_dict().items()}

    with pytest.raises(ValueError, match=message):
        apply_structure(model, plans, masked=path)

    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
