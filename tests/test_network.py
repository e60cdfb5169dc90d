"""The annealing network's memory rules on a real ONNX Runtime session: each layer's weights held once (the
layers' arrays, not the model proto), one array of activation rows for layers that read one tensor, the
folds as views of the tuning rows, and a cut layer's fits packed to their nonzero entries, all without
changing a number."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from conftest import make_model, run, tensor, value
from onnx_decomp.config import SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.search.fidelity import FidelityGate
from onnx_decomp.search.network import PACKED_DENSITY, Network, Packed, packed, unpacked

N = 16


def _two_readers(rng):
    """``q = x Wq``, ``k = x Wk`` (both read ``x``), ``y = (q + k) Wo``."""
    weights = {name: (rng.standard_normal((N, N)) / 4).astype(np.float32) for name in ("Wq", "Wk", "Wo")}
    nodes = [helper.make_node("Relu", ["x0"], ["x"], name="relu"),
             helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k"),
             helper.make_node("Add", ["q", "k"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "Wo"], ["y"], name="o")]
    return make_model(nodes, [value("x0", ["N", N])], [value("y", ["N", N])],
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


def test_a_mostly_zero_fit_is_packed_to_its_nonzero_entries_and_unpacks_to_the_same_array(rng):
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    cut = weight * (rng.random(weight.shape) < PACKED_DENSITY / 2)
    bias = rng.standard_normal(32).astype(np.float32)
    packed_cut, kept_bias = packed((cut, bias))
    assert isinstance(packed_cut, Packed) and kept_bias is bias
    assert packed_cut.positions.nbytes + packed_cut.values.nbytes < cut.nbytes / 2
    np.testing.assert_array_equal(unpacked(packed_cut), cut)
    assert unpacked(packed_cut).dtype == np.float32 and unpacked(packed_cut).shape == cut.shape
    assert packed((weight, bias))[0] is weight  # dense: kept as it is
    assert packed((packed_cut, bias))[0] is packed_cut
