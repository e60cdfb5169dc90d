"""FLOPs are counted at the shapes the inputs really give: where ONNX shape inference loses a dim (a
position-id Slice ending at ``Shape(mask)`` as torch exports BERT; a ``Shape -> ReduceProd -> Concat ->
Reshape`` flatten as in PaddleOCR's recognizer), ONNX Runtime's shapes fill in, and a model left unchanged
counts the same before and after."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_decomp
from conftest import make_model, tensor, value
from onnx_decomp.cost.model_stats import counted_shapes, model_stats
from onnx_decomp.io.shapes import InputSpec, concrete_shapes

D, VOCAB, POSITIONS = 16, 50, 64


def bert_like() -> onnx.ModelProto:
    """Token + position embeddings (positions sliced to the mask's length), then q k^T."""
    rng = np.random.default_rng(0)
    weights = {"word": (VOCAB, D), "position": (POSITIONS, D), "Wq": (D, D), "Wk": (D, D)}
    initializers = [tensor(name, rng.standard_normal(shape).astype(np.float32)) for name, shape in weights.items()]
    initializers += [tensor("position_ids", np.arange(POSITIONS)[None]), tensor("zero", np.array([0])),
                     tensor("one", np.array([1]))]
    nodes = [helper.make_node("Gather", ["word", "input_ids"], ["tokens"]),
             helper.make_node("Shape", ["attention_mask"], ["length"], start=1, end=2),
             helper.make_node("Slice", ["position_ids", "zero", "length", "one"], ["positions"]),
             helper.make_node("Gather", ["position", "positions"], ["placed"]),
             helper.make_node("Add", ["tokens", "placed"], ["hidden"]),
             helper.make_node("MatMul", ["hidden", "Wq"], ["q"]),
             helper.make_node("MatMul", ["hidden", "Wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"])]
    inputs = [value(name, ["batch", "sequence"], TensorProto.INT64) for name in ("input_ids", "attention_mask")]
    return make_model(nodes, inputs, [value("scores", ["batch", "sequence", "sequence"])], initializers)


def recognizer_like() -> onnx.ModelProto:
    """Conv, flattened to [N, C, H * W] by a shape computed in the graph, transposed, then a MatMul head."""
    rng = np.random.default_rng(1)
    initializers = [tensor("conv", rng.standard_normal((D, 3, 3, 3)).astype(np.float32)),
                    tensor("head", rng.standard_normal((D, 10)).astype(np.float32)),
                    tensor("zero", np.array([0])), tensor("two", np.array([2]))]
    nodes = [helper.make_node("Conv", ["x", "conv"], ["features"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["features"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "two"], ["lead"]),
             helper.make_node("Shape", ["features"], ["spatial"], start=2),
             helper.make_node("ReduceProd", ["spatial"], ["columns"], keepdims=1),
             helper.make_node("Concat", ["lead", "columns"], ["flat"], axis=0),
             helper.make_node("Reshape", ["features", "flat"], ["sequence"]),
             helper.make_node("Transpose", ["sequence"], ["steps"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["steps", "head"], ["logits"])]
    return make_model(nodes, [value("x", ["N", 3, 8, "W"])], [value("logits", ["N", "T", 10])], initializers)


def bert_specs(batch: int, sequence: int) -> list[InputSpec]:
    return [InputSpec(name, np.dtype(np.int64), (batch, sequence)) for name in ("input_ids", "attention_mask")]


def bert_flops(batch: int, sequence: int) -> int:
    return 2 * (2 * batch * sequence * D * D + batch * sequence * sequence * D)


@pytest.mark.parametrize("batch, sequence", [(1, 12), (3, 20)])
def test_bert_like_counts_every_matmul_where_inference_loses_the_batch(batch, sequence):
    model, specs = bert_like(), bert_specs(batch, sequence)
    if batch == 1:  # the premise: inference alone broadcasts [1, s, d] with [?, ?, d] to [?, s, d]
        assert None in concrete_shapes(model, specs, data_prop=True)["q"]
    assert model_stats(model, counted_shapes(model, specs)).matmul_flops == bert_flops(batch, sequence)


def test_recognizer_like_counts_conv_and_matmul_past_a_computed_reshape():
    model, specs = recognizer_like(), [InputSpec("x", np.dtype(np.float32), (2, 3, 8, 40))]
    assert None in concrete_shapes(model, specs, data_prop=True)["logits"]  # the premise
    conv, head = 2 * 2 * D * 8 * 40 * 3 * 3 * 3, 2 * 2 * 8 * 40 * D * 10
    assert model_stats(model, counted_shapes(model, specs)).matmul_flops == conv + head


def test_real_inputs_give_the_shapes_counted():
    model = bert_like()
    feeds = {name: np.ones((2, 30), np.int64) for name in ("input_ids", "attention_mask")}
    shapes = counted_shapes(model, bert_specs(2, 30), feeds)
    assert shapes["scores"] == [2, 30, 30]


def test_a_model_left_unchanged_counts_the_same_before_and_after():
    shapes = {"input_ids": [1, 12], "attention_mask": [1, 12]}
    _, report = onnx_decomp.decompose(bert_like(), input_shapes=shapes, gate="flops")
    assert not report.planned
    assert report.before.matmul_flops == report.after.matmul_flops == bert_flops(1, 12)
