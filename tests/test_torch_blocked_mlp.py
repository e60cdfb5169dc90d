"""A real PyTorch export: an MLP whose hidden weights were masked block-diagonal before export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import onnx_decomp
from conftest import FLOPS_BRANCHES, op_types, run


pytestmark = pytest.mark.slow  # every test here exports with torch or trains


def blocked_mlp(blocks: int, width: int, seed: int = 0) -> torch.nn.Module:
    """16 -> width -> width -> 4 MLP; the middle layer is block-diagonal under a hidden permutation."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 4))
    size = width // blocks
    mask = torch.block_diag(*[torch.ones(size, size)] * blocks)
    rows, cols = torch.randperm(width), torch.randperm(width)
    with torch.no_grad():
        model[2].weight.mul_(mask[rows][:, cols])
    return model.eval()


@pytest.mark.parametrize("dynamo", [True, False])
def test_exported_blocked_mlp_decomposes_into_its_blocks(tmp_path, dynamo):
    model = blocked_mlp(blocks=4, width=64)
    path = tmp_path / "mlp.onnx"
    x = torch.randn(3, 16)
    torch.onnx.export(model, (x,), path, dynamo=dynamo, external_data=False, input_names=["x"],
                      dynamic_axes=None if dynamo else {"x": {0: "batch"}},
                      dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamo else None)
    original = onnx.load(path)

    rewritten, report = onnx_decomp.decompose(path, gate=FLOPS_BRANCHES)

    rewritten_nodes = [n for n in report.nodes if n.action == "rewrite"]
    assert [n.blocks for n in rewritten_nodes] == [4]
    assert rewritten_nodes[0].shape == [64, 64]
    dense_ops = op_types(original).count("Gemm") + op_types(original).count("MatMul")
    assert op_types(rewritten).count("Gemm") + op_types(rewritten).count("MatMul") == dense_ops - 1 + 4
    for batch in (1, 5):
        feed = {"x": np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)}
        expected = model(torch.from_numpy(feed["x"])).detach().numpy()
        np.testing.assert_allclose(run(rewritten, feed)[0], run(original, feed)[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run(rewritten, feed)[0], expected, rtol=1e-4, atol=1e-5)
