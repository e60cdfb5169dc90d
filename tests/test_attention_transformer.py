"""Head-aligned annealing units on a tiny transformer exported with onnx_decomp.torch.export: the attention
block is found, its unit cuts whole heads consistently in q, k, v and o, and a model held to such a plan
decomposes exactly (outputs equal within rtol/atol 1e-5, the four projections rewritten)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnx_decomp import decompose
from onnx_decomp.config import AnnealConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.search.evidence import StoredEvidence
from onnx_decomp.search.families import SearchSpace, build_units
from onnx_decomp.search.families.attention import find_attention
from onnx_decomp.search.network import Network
from onnx_decomp.torch import apply_block_mask, export
from onnx_decomp_models.char_lm import CharLM
from conftest import ANY_BLOCKS, run

pytestmark = pytest.mark.slow
HEADS, D, CONTEXT, VOCAB = 4, 32, 16, 20
SHAPES = {"tokens": [3, CONTEXT]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-block CharLM (d_model 32, 4 heads of 8, FFN 64), exported; its ONNX weights' parameters."""
    torch.manual_seed(0)
    model = CharLM(d_model=D, heads=HEADS, ffn=64, layers=1, context=CONTEXT, vocab=VOCAB)
    example = torch.randint(0, VOCAB, (2, CONTEXT))
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    exported = export(model, (example,), path, input_names=["tokens"], output_names=["logits"])
    parameter = {name: group[0].parameter for name, group in exported.bindings.items()}
    return model, path, parameter


def attention_unit(path):
    ctx = ModelContext.load(path, SHAPES)
    network = Network(ctx)
    space = SearchSpace(network, ctx.shapes, StoredEvidence.write({}), AnnealConfig(families=("attention",)))
    units = build_units(space)
    return network, find_attention(network.layers, ctx.shapes), units


def test_the_attention_block_is_found_and_its_unit_cuts_whole_heads_consistently(tiny):
    _, path, parameter = tiny
    network, blocks, units = attention_unit(path)

    assert len(blocks) == 1 and blocks[0].heads == HEADS
    (block,) = blocks
    name = {i: parameter[network.layers[i].weight] for i in block.layers}
    assert {name[i] for i in block.query_key} == {"blocks.0.q.weight", "blocks.0.k.weight"}
    assert name[block.value] == "blocks.0.v.weight" and name[block.output] == "blocks.0.o.weight"
    (unit,) = units
    assert [layer.index for layer in unit.layers] == list(block.layers) and unit.rungs == [2, 4]
    norms = {layer.site: np.ones(layer.shape[1]) for layer in network.layers}
    for rung, k in enumerate(unit.rungs):
        plans = unit.structure(rung, norms).plans
        q, key, v, o = (plans[network.layers[i].site] for i in block.layers)
        assert np.array_equal(q.mask(), key.mask()) and np.array_equal(q.mask(), v.mask())
        assert len(q.branches) == k
        for branch in q.branches:
            heads = set(branch.rows // (D // HEADS))
            assert len(branch.rows) == len(heads) * (D // HEADS) == D // k  # whole heads, k balanced groups
        assert {tuple(b.rows) for b in q.branches} == {tuple(b.cols) for b in o.branches}  # o reads its heads
        assert sorted(np.concatenate([b.cols for b in q.branches])) == list(range(D))  # inputs partitioned
        assert sorted(np.concatenate([b.rows for b in o.branches])) == list(range(D))  # outputs partitioned


def test_a_model_held_to_a_head_aligned_plan_decomposes_exactly(tiny, tmp_path, rng):
    model, path, parameter = tiny
    network, _, (unit,) = attention_unit(path)
    norms = {layer.site: np.ones(layer.shape[1]) for layer in network.layers}
    plans = unit.structure(0, norms).plans  # k = 2
    masked = CharLM(d_model=D, heads=HEADS, ffn=64, layers=1, context=CONTEXT, vocab=VOCAB)
    masked.load_state_dict(model.state_dict())
    apply_block_mask(masked, {parameter[site.weight]: plan for site, plan in plans.items()})
    tokens = rng.integers(0, VOCAB, (3, CONTEXT))
    masked_path = tmp_path / "masked.onnx"
    export(masked, (torch.from_numpy(tokens[:2]),), masked_path, input_names=["tokens"], output_names=["logits"])

    rewritten, report = decompose(str(masked_path), input_shapes=SHAPES, gate=ANY_BLOCKS)

    rewritten_weights = {n.weight for n in report.nodes if n.action == "rewrite"}
    assert {site.weight for site in plans} <= rewritten_weights
    assert all(n.blocks == 2 for n in report.nodes if n.weight in {site.weight for site in plans})
    expected = run(onnx.load(str(masked_path)), {"tokens": tokens})[0]
    with torch.no_grad():
        np.testing.assert_allclose(masked(torch.from_numpy(tokens)).numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run(rewritten, {"tokens": tokens})[0], expected, rtol=1e-5, atol=1e-5)
