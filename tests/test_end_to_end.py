"""The whole flow on real data: train with the init recorded -> export -> analyze -> co-clustered plan ->
mask and fine-tune -> export -> exact decomposition into the planned blocks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import onnx_decomp
from conftest import run
from onnx_decomp.planning.coclustering import coclustered_plan
from onnx_decomp.torch import apply_block_mask, export, finetune_under_mask, record_init
from onnx_decomp_models.digits import digits_mlp, digits_split


pytestmark = pytest.mark.slow  # every test here exports with torch or trains


def test_digits_pipeline_ends_in_an_exact_decomposition(tmp_path):
    torch.manual_seed(0)
    x_train, x_test, y_train, y_test = digits_split(0)
    model = digits_mlp(128)
    init = record_init(model)
    batches = [(torch.from_numpy(x_train[i:i + 64]), torch.from_numpy(y_train[i:i + 64]))
               for i in range(0, len(x_train), 64)]
    finetune_under_mask(model, torch.nn.functional.cross_entropy, batches, epochs=15)
    example = (torch.from_numpy(x_test[:2]),)
    export(model, example, tmp_path / "dense.onnx", init, reference_path=tmp_path / "init.onnx",
           input_names=["input"])
    dense_accuracy = (run_model(tmp_path / "dense.onnx", x_test).argmax(1) == y_test).mean()

    analysis = onnx_decomp.analyze(tmp_path / "dense.onnx")
    assert [(t.null, t.null_source) for t in analysis.tensors] == [("torch-linear", "metadata")] * 3
    plans = coclustered_plan(model[2].weight.detach().numpy(), model[4].weight.detach().numpy(), 4)
    mask = apply_block_mask(model, {"2.weight": plans[0], "4.weight": plans[1]})
    finetune_under_mask(model, torch.nn.functional.cross_entropy, batches, epochs=10, mask=mask)
    export(model, example, tmp_path / "blocked.onnx", init, input_names=["input"])

    rewritten, report = onnx_decomp.decompose(tmp_path / "blocked.onnx",
                                              gate=onnx_decomp.GateConfig("flops", min_flop_reduction=1.5))

    assert {n.weight: n.blocks for n in report.nodes if n.action == "rewrite"} == {"2.weight": 4, "4.weight": 4}
    blocked_logits = run_model(tmp_path / "blocked.onnx", x_test)
    np.testing.assert_allclose(run(rewritten, {"input": x_test})[0], blocked_logits, rtol=1e-4, atol=1e-5)
    assert (blocked_logits.argmax(1) == y_test).mean() >= dense_accuracy - 0.03


def run_model(path, x):
    return run(onnx.load(path), {"input": x})[0]
