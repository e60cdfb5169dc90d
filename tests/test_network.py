"""The annealing network's memory rules on a real ONNX Runtime session: each layer's weights held once (the
layers' arrays, not the model proto), or read from their file at every use where the model keeps them in
external data, one array of activation rows for layers that read one tensor, the
folds as views of the tuning rows, and a block cut's fits kept as their blocks, all without changing a
number."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from conftest import make_model, run, tensor, value
from onnx_decomp.config import SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.io.model_io import save_model
from onnx_decomp.planning.coclustering import spectral_cocluster
from onnx_decomp.search.fidelity import FidelityGate
from onnx_decomp.search.importance import CHUNK_ROWS, importance
from onnx_decomp.search.network import Blocks, Network, unpacked
from onnx_decomp.search.refit import Refitter, plain_cut
from onnx_decomp_passes import plan_from_support

N = 16


def _two_readers(rng, n: int = N):
    """``q = x Wq``, ``k = x Wk`` (both read ``x``), ``y = (q + k) Wo``, all ``n`` wide."""
    weights = {name: (rng.standard_normal((n, n)) / 4).astype(np.float32) for name in ("Wq", "Wk", "Wo")}
    nodes = [helper.make_node("Relu", ["x0"], ["x"], name="relu"),
             helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k"),
             helper.make_node("Add", ["q", "k"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "Wo"], ["y"], name="o")]
    return make_model(nodes, [value("x0", ["N", n])], [value("y", ["N", n])],
                      [tensor(name, array) for name, array in weights.items()])


def test_the_network_holds_each_weight_once_and_gives_the_model_back(rng):
    model = _two_readers(rng)
    network = Network(ModelContext.load(model), SessionConfig("cpu"))
    x = rng.standard_normal((8, N)).astype(np.float32)
    assert all(numpy_helper.to_array(t).size == 0 for t in network.proto.graph.initializer)  # the layers' arrays only
    original = network.model_with({})
    assert {t.name: t.dims for t in original.graph.initializer} == {"Wq": [N, N], "Wk": [N, N], "Wo": [N, N]}
    np.testing.assert_array_equal(run(original, {"x0": x})[0], run(model, {"x0": x})[0])
    np.testing.assert_array_equal(network.run([{"x0": x}]).outputs[0], run(model, {"x0": x})[0])


def test_weights_in_external_data_are_read_at_every_use_and_change_no_number(rng, tmp_path):
    width = 64  # tensors of over SMALL_TENSOR elements go to external data
    model = _two_readers(rng, width)
    save_model(model, tmp_path / "model.onnx", external_data=True)
    held, read = (Network(ModelContext.load(m), SessionConfig("cpu")) for m in (model, tmp_path / "model.onnx"))
    assert all(layer.held_weight is not None for layer in held.layers)
    assert all(layer.held_weight is None for layer in read.layers)
    first, second = (layer.stored_weight for layer in (read.layers[0], read.layers[0]))
    assert not np.shares_memory(first, second)  # a fresh array at every use: nothing kept between uses
    x = [{"x0": rng.standard_normal((8, width)).astype(np.float32)}]
    for a, b in zip(held.run(x, taps=True).taps.values(), read.run(x, taps=True).taps.values()):
        np.testing.assert_array_equal(a, b)
    plan = plan_from_support(np.kron(np.eye(2, dtype=bool), np.ones((width // 2, width // 2), bool)))
    dense = held.run(x, taps=True).taps[held.layers[2].site].astype(np.float64)
    fits = [Refitter(0.1)(network.layers[2], plan, dense, dense) for network in (held, read)]
    np.testing.assert_array_equal(unpacked(fits[0][0]), unpacked(fits[1][0]))


def test_a_released_network_holds_neither_its_session_nor_its_layers_weights_and_still_counts_macs(rng):
    network = Network(ModelContext.load(_two_readers(rng)), SessionConfig("cpu"))
    masked, macs = network.model_with({}), network.dense_macs
    network.release()
    assert network.session is None and all(layer.held_weight is None for layer in network.layers)
    assert network.dense_macs == macs and len(masked.graph.initializer) == 3  # the masked model keeps its copy


def test_layers_reading_one_tensor_share_its_rows_and_the_folds_are_views(rng):
    network = Network(ModelContext.load(_two_readers(rng)), SessionConfig("cpu"))
    batches = [{"x0": rng.standard_normal((4, N)).astype(np.float32)} for _ in range(2)]
    taps = network.run(batches, taps=True).taps
    q, k, o = (layer.site for layer in network.layers)
    assert taps[q] is taps[k] and taps[o] is not taps[q]
    np.testing.assert_array_equal(taps[q], np.maximum(np.concatenate([b["x0"] for b in batches]), 0))
    per_fold = [network.run(batches[:1], taps=True).taps, network.run(batches[1:], taps=True).taps]
    joined = FidelityGate.joined(per_fold)
    assert joined[q] is joined[k]
    folds = FidelityGate.split(joined, per_fold[0])
    for fold, taps in zip(folds, per_fold):
        np.testing.assert_array_equal(fold[o], taps[o])
        assert np.shares_memory(fold[o], joined[o])


def _one_layer(op: str, rng):
    """One weighted op in each stored layout: MatMul ``B [in, out]``, Gemm ``transB=1`` with ``alpha`` 0.5 and
    a bias, a 3 x 3 Conv kernel."""
    if op == "Conv":
        node = helper.make_node("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")
        shapes, weight = ([1, 4, 5, 5], [1, 6, 5, 5]), rng.standard_normal((6, 4, 3, 3))
    elif op == "Gemm":
        node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1, alpha=0.5, name="fc")
        shapes, weight = ([8, N], [8, 12]), rng.standard_normal((12, N))
    else:
        node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
        shapes, weight = ([8, N], [8, 12]), rng.standard_normal((N, 12))
    bias = [tensor("b", rng.standard_normal(6 if op == "Conv" else 12).astype(np.float32))] if op != "MatMul" else []
    return make_model([node], [value("x", shapes[0])], [value("y", shapes[1])],
                      [tensor("W", weight.astype(np.float32)), *bias])


@pytest.mark.parametrize("op", ["MatMul", "Gemm", "Conv"])
def test_a_block_cut_is_kept_as_its_blocks_and_makes_the_weight_the_dense_cut_stored(op, rng):
    (layer,) = Network(ModelContext.load(_one_layer(op, rng)), SessionConfig("cpu")).layers
    n_out, n_in = layer.shape
    keep = np.zeros(layer.shape, bool)
    keep[:n_out // 2, :n_in // 3] = keep[n_out // 2:, n_in // 3: 2 * n_in // 3] = True
    plan = plan_from_support(keep)
    dense_cut = layer.op.stored_from(layer.matrix() * plan.mask())  # the cut as a dense array would store it

    for weight, _ in (plain_cut(layer, plan), Refitter()(layer, plan, *[rng.standard_normal((40, n_in))] * 2)):
        assert isinstance(weight, Blocks)
        assert sum(values.nbytes for *_, values in weight.blocks) == keep.sum() * layer.stored_weight.itemsize
        array = unpacked(weight)
        assert array.shape == layer.stored_weight.shape and array.dtype == layer.stored_weight.dtype
        assert np.all(array[dense_cut == 0] == 0)
    np.testing.assert_array_equal(unpacked(plain_cut(layer, plan)[0]), dense_cut)


def test_importance_in_row_chunks_is_the_formula_and_the_co_clustering_may_scale_it_in_place(rng):
    """``importance`` computes ``|e * W| * ||x||`` ``CHUNK_ROWS`` rows at a time, bit for bit the whole-matrix
    formula, and stores it as float64 for the co-clustering, which with ``overwrite`` scales that array in
    place (no second matrix-sized array) and labels rows and columns as it does a copy."""
    w = (rng.standard_normal((64, 600)) / 8).astype(np.float32)  # MatMul B [in, out]: W [600, 64], 3 chunks
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [value("x", ["N", 64])],
                       [value("y", ["N", 600])], [tensor("W", w)])
    layer = Network(ModelContext.load(model), SessionConfig("cpu")).layers[0]
    evidence, norms = rng.random((600, 64)).astype(np.float16), rng.random(64) * 3
    assert len(layer.matrix()) > 2 * CHUNK_ROWS
    formula = np.abs(w.T * evidence.astype(np.float32)) * norms.astype(np.float32)[None, :]
    np.testing.assert_array_equal(importance(layer, evidence, norms), formula)
    np.testing.assert_array_equal(importance(layer, None, norms), np.abs(w.T) * norms.astype(np.float32)[None, :])
    scores = importance(layer, evidence, norms, dtype=np.float64)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, formula.astype(np.float64))
    copied = spectral_cocluster(scores, 4)
    np.testing.assert_array_equal(scores, formula.astype(np.float64))  # a copy was scaled
    in_place = spectral_cocluster(scores, 4, overwrite=True)
    assert not np.array_equal(scores, formula.astype(np.float64))  # this array was
    for labels, again in zip(copied, in_place):
        np.testing.assert_array_equal(labels, again)


def test_the_model_with_weights_written_to_a_data_file_holds_none_and_runs_as_the_one_in_memory(rng, tmp_path):
    width = 64  # tensors of over SMALL_TENSOR elements go to the data file, as save_model moves them out
    network = Network(ModelContext.load(_two_readers(rng, width)), SessionConfig("cpu"))
    plan = plan_from_support(np.kron(np.eye(2, dtype=bool), np.ones((width // 2, width // 2), bool)))
    weights = {network.layers[2].site: plain_cut(network.layers[2], plan)}
    in_memory = network.model_with(weights)
    written = network.model_with(weights, tmp_path / "masked.onnx.data")
    assert all(tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data
               for tensor in written.graph.initializer)
    assert written.ByteSize() < 4 * width * width  # none of the three weights' bytes
    (tmp_path / "masked.onnx").write_bytes(written.SerializeToString())
    x = {"x0": rng.standard_normal((8, width)).astype(np.float32)}
    session = ort.InferenceSession(str(tmp_path / "masked.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, x)[0], run(in_memory, x)[0])
