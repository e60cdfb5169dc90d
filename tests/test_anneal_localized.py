"""The paper's localized scenario (design.md section 7) trained in the test: annealing cuts the chain along the
planted groups, and its plans drive masked fine-tuning on the PyTorch side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import onnx_decomp
from onnx_decomp.torch import apply_block_mask, export, finetune_under_mask, record_init
from onnx_decomp_models.common import Batches
from onnx_decomp_models.localized import make_task

GROUPS, GROUP_IN, GROUP_OUT, HIDDEN = 4, 16, 4, 128


def labels_of(plan, attribute, size):
    labels = np.full(size, -1)
    for label, branch in enumerate(plan.branches):
        labels[getattr(branch, attribute)] = label
    return labels


@pytest.mark.slow
def test_annealing_cuts_the_localized_chain_along_the_planted_groups(tmp_path):
    torch.manual_seed(0)
    sample, input_groups, output_groups = make_task(np.random.default_rng(0), GROUPS, GROUP_IN, GROUP_OUT)
    (x, y), (x_calib, _) = sample(2000), sample(600)
    d_in, d_out = GROUPS * GROUP_IN, GROUPS * GROUP_OUT
    model = torch.nn.Sequential(torch.nn.Linear(d_in, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, d_out))
    init = record_init(model)
    finetune_under_mask(model, torch.nn.functional.mse_loss, Batches(x, y, 64), epochs=10)  # dense training
    path = tmp_path / "localized.onnx"
    export(model, (torch.from_numpy(x_calib[:2]),), path, init, input_names=["input"], output_names=["output"])

    _, report = onnx_decomp.anneal(path, {"input": x_calib}, tolerance=0.3, gate="flops",
                                   config=onnx_decomp.AnnealConfig(search_samples=None))

    chain = [s for s in report.accepted if "+" in s.candidate.unit]
    assert chain and chain[-1].candidate.structure == f"k={GROUPS}"
    first, second = (report.plans[name] for name in chain[-1].candidate.plans)
    assert adjusted_rand_score(input_groups, labels_of(first, "cols", d_in)) >= 0.95
    assert adjusted_rand_score(output_groups, labels_of(second, "rows", d_out)) >= 0.95
    assert report.final.validation <= 0.3 and report.final.exact_ok
    assert report.stability[-1].stable  # inputs and outputs come back on every resample

    # the plans, keyed by ONNX initializer name, mask the PyTorch model for fine-tuning
    mask = apply_block_mask(model, report.plans, onnx_model=path)
    assert torch.all(model[0].weight[~torch.from_numpy(first.mask())] == 0)
    assert torch.all(model[2].weight[~torch.from_numpy(second.mask())] == 0)
    assert set(mask.masks) == {"0.weight", "2.weight"}
