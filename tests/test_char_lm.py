"""The bundled char LM and the rules of its comparison (issue 11): the committed model is the one
``models/char_lm.py`` describes (this interpreter's standard library, split by file), it predicts in ONNX
Runtime, its weights come back into PyTorch by name, and the peers (low rank, structured pruning) meet a
MatMul budget on a small CharLM with the bundled context."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnx_decomp.torch import factorize
from onnx_decomp_models import char_lm
from onnx_decomp_models import char_lm_flow as flow
from onnx_decomp_models.char_lm import CONTEXT, OUT, VOCAB, CharLM
from onnx_decomp_models.comparison import ranks_within, weight_macs
from conftest import run


def small_lm() -> CharLM:
    torch.manual_seed(0)
    return CharLM(d_model=32, heads=4, ffn=64, layers=2)


def test_the_committed_windows_come_from_this_interpreters_held_out_stdlib_files():
    train, test, digest = char_lm.corpus()
    metadata = {p.key: p.value for p in onnx.load(str(OUT / "model.onnx")).metadata_props}
    assert metadata[char_lm.CORPUS_KEY] == digest
    assert 5 * len(test) < len(train)
    (x, y), (x_eval, _) = char_lm.test_windows(char_lm.encode(test))
    np.testing.assert_array_equal(np.load(OUT / "calib.npz")["tokens"], x)
    np.testing.assert_array_equal(np.load(OUT / "labels.npz")["logits"], y)
    assert not set(map(bytes, x)) & set(map(bytes, x_eval))


def test_the_committed_model_predicts_and_its_weights_come_back_into_pytorch():
    x, y = np.load(OUT / "calib.npz")["tokens"][:32], np.load(OUT / "labels.npz")["logits"][:32]
    (logits,) = run(onnx.load(str(OUT / "model.onnx")), {"tokens": x})
    accuracy, bits = char_lm.scores(logits, y)
    assert accuracy > 0.5 and bits < 2.5  # a uniform guess over the 98 symbols: 0.01 and 6.6 bits
    np.testing.assert_allclose(char_lm.torch_logits(flow.model_from_onnx(OUT / "model.onnx"), x), logits,
                               rtol=1e-4, atol=1e-4)


def test_low_rank_is_exact_at_full_rank_and_meets_a_budget():
    model, x = small_lm(), torch.randint(0, VOCAB, (3, CONTEXT))
    with torch.no_grad():
        before = model(x)
        factorize(model, {"blocks.0.up": 32})
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not an nn.Linear"):
        factorize(model, {"norm": 4})
    with pytest.raises(ValueError, match="rank 33 out of range"):
        factorize(model, {"blocks.1.up": 33})

    model = small_lm()
    budget = 0.5 * weight_macs(model)
    ranks = ranks_within(model, flow.block_layers(model), budget)
    factorize(model, ranks)
    assert sorted(ranks) == sorted(f"blocks.{b}.{p}" for b in range(2) for p in ("q", "k", "v", "o", "up", "down"))
    assert 0.4 * budget < weight_macs(model) <= budget
    assert model(x).shape == (3, CONTEXT, VOCAB)


def test_structured_pruning_removes_whole_heads_and_units_alike_within_the_budget():
    model = small_lm()
    budget = 0.5 * weight_macs(model)
    heads, units = flow.prune_to(model, budget)
    assert (heads, units) == (2, model.blocks[0].up.out_features) and units < 64
    assert weight_macs(model) <= budget
    for block in model.blocks:
        assert (block.q.out_features, block.k.out_features, block.v.out_features, block.o.in_features) == (16,) * 4
        assert (block.up.out_features, block.down.in_features) == (units, units)
        assert block.o.out_features == 32
    assert model(torch.randint(0, VOCAB, (2, CONTEXT))).shape == (2, CONTEXT, VOCAB)
