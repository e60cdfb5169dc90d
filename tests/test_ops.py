"""The weighted-op view (``passes/ops.py``): the matrix view of MatMul, Gemm and Conv weights, its round trip
back to what the model stores, the feature axis, and the output-bias rule."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from conftest import make_model, tensor, value
from onnx_decomp_passes import CONV, Layout, find_weighted_ops


def only_op(model, op_types=("MatMul", "Gemm")):
    (op,), skipped = find_weighted_ops(gs.import_onnx(model), op_types)
    assert not skipped
    return op


@pytest.mark.parametrize("trans_b,alpha", [(0, 1.0), (1, 0.5)])
def test_gemm_matrix_view_effective_weight_and_round_trip(rng, trans_b, alpha):
    w = rng.standard_normal((3, 5)).astype(np.float32)  # [n_out, n_in]
    model = make_model([helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="fc", transB=trans_b, alpha=alpha,
                                         beta=2.0)],
                       [value("x", ["N", 5])], [value("y", ["N", 3])],
                       [tensor("B", w if trans_b else w.T.copy()), tensor("C", np.ones(3, np.float32))])
    op = only_op(model)
    assert op.layout is (Layout.OUT_IN if trans_b else Layout.IN_OUT) and op.shape == (3, 5)
    assert op.feature_axis == -1 and op.window == 1 and op.groups == 1
    np.testing.assert_array_equal(op.matrix(), w)
    np.testing.assert_allclose(op.effective(), alpha * w.astype(np.float64))
    np.testing.assert_array_equal(op.stored_from(op.effective()), op.weight.values)
    bias = op.output_bias()
    assert bias.tensor.name == "C" and bias.scale == 2.0 and bias.node is op.node


def test_conv_kernel_view_per_group_and_round_trip(rng):
    kernel = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)  # C_out 6, C_in 4 in 2 groups
    model = make_model([helper.make_node("Conv", ["x", "K", "b"], ["y"], name="conv", group=2, pads=[1, 1, 1, 1])],
                       [value("x", ["N", 4, 8, 8])], [value("y", ["N", 6, 8, 8])],
                       [tensor("K", kernel), tensor("b", np.zeros(6, np.float32))])
    assert find_weighted_ops(gs.import_onnx(model))[0] == []  # the rewrite looks at MatMul/Gemm by default
    op = only_op(model, CONV)
    assert op.layout is Layout.KERNEL and op.feature_axis == 1
    assert op.shape == (6, 2 * 9) and op.window == 9 and op.groups == 2
    np.testing.assert_array_equal(op.matrix()[4], kernel[4].reshape(-1))  # output channel 4 over its window
    np.testing.assert_array_equal(op.stored_from(op.effective()), kernel)
    assert op.output_bias().tensor.name == "b"


@pytest.mark.parametrize("case", ["alone", "shared constant", "graph output"])
def test_matmul_bias_is_the_add_that_alone_reads_it(rng, case):
    """A MatMul's bias is the constant of the one Add reading its output, unless the constant is read elsewhere
    or the output is also a graph output."""
    nodes = [helper.make_node("MatMul", ["x", "B"], ["m"], name="fc"), helper.make_node("Add", ["m", "c"], ["y"])]
    outputs = [value("y", ["N", 3])]
    if case == "shared constant":
        nodes.append(helper.make_node("Mul", ["y", "c"], ["z"]))
        outputs = [value("z", ["N", 3])]
    if case == "graph output":
        outputs.append(value("m", ["N", 3]))
    model = make_model(nodes, [value("x", ["N", 4])], outputs,
                       [tensor("B", rng.standard_normal((4, 3)).astype(np.float32)),
                        tensor("c", np.ones(3, np.float32))])
    bias = only_op(model).output_bias()
    if case == "alone":
        assert bias.tensor.name == "c" and bias.scale == 1.0 and bias.node.op == "Add"
    else:
        assert bias is None


def test_fp16_weight_behind_a_cast_is_viewed_in_its_stored_type(rng):
    w = rng.standard_normal((4, 3)).astype(np.float16)
    model = make_model([helper.make_node("Cast", ["B16"], ["B"], to=TensorProto.FLOAT),
                        helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")],
                       [value("x", ["N", 4])], [value("y", ["N", 3])], [tensor("B16", w)])
    op = only_op(model)
    assert op.cast is not None and op.weight.name == "B16" and op.shape == (3, 4)
    assert op.stored_from(op.effective()).dtype == np.float16
