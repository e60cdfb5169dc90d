"""A rewritten model takes every batch size the original takes, 0 and 1 included, in every form; and
validation proves it: where the batch is symbolic it also runs the first input set cut to 0 and 1 rows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_decomp
from conftest import hidden_blocks, make_model, run, tensor, value
from onnx_decomp import GateConfig, ValidationConfig
from onnx_decomp.config import Tolerance
from onnx_decomp.io.shapes import input_specs
from onnx_decomp.runtime.validation import validate


def blocked(rng, rank=2) -> onnx.ModelProto:
    w, _ = hidden_blocks(rng, [(8, 8)] * 4)
    lead = ["N", "S"][:rank - 1]
    return make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", [*lead, 32])],
                      [value("y", [*lead, 32])], [tensor("B", w.T.copy())])


def with_flatten(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its output passed through ``Reshape([0, -1])``: the same values, except that a batch
    of 0 rows cannot be reshaped (-1 is not inferable from 0 elements)."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[-1].output[0] = "y_raw"
    bad.graph.node.append(helper.make_node("Reshape", ["y_raw", "flat"], ["y"]))
    bad.graph.initializer.append(tensor("flat", np.array([0, -1], np.int64)))
    return bad


@pytest.mark.parametrize("form", ["branches", "batched", "transposed", "einsum", "conv1x1"])
@pytest.mark.parametrize("rank", [2, 3])
def test_every_form_takes_every_batch_size_the_original_takes(rng, form, rank):
    model = blocked(rng, rank)
    rewritten, report = onnx_decomp.decompose(model, gate=GateConfig("flops", forms=(form,)))
    assert [n.form for n in report.nodes] == [form]
    assert report.validation.ok and report.validation.edge_batches == [0]
    for lead in [(0,), (1,), (5,), (0, 3), (2, 0)]:
        if len(lead) == rank - 1:
            x = rng.standard_normal((*lead, 32)).astype(np.float32)
            np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_validation_finds_a_rewrite_that_fails_on_zero_rows(rng):
    model = blocked(rng)
    config = ValidationConfig(check=2)
    result = validate(model, with_flatten(model), input_specs(model, {"x": (4, 32)}), config, Tolerance())
    assert not result.ok and result.edge_batches == [0, 1]
    assert result.outputs[0].max_abs == float("inf")


def test_a_batch_size_the_original_cannot_take_is_not_compared(rng):
    model = with_flatten(blocked(rng))
    result = validate(model, model, input_specs(model, {"x": (4, 32)}), ValidationConfig(check=1), Tolerance())
    assert result.ok and result.edge_batches == [1]

