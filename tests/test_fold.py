"""Permutation folding and block-layout chains: exact, refused where a permuted tensor has another reader,
and no gathering, concatenating or splitting between matching decomposed layers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from conftest import make_model, node_sites, op_types, run, tensor, value
from onnx_decomp_passes import (Batched, BlockEinsum, BlockRewrite, FoldPermutation, KeepBlockLayout, plan_folding,
                                plan_from_support)

RTOL, ATOL = 1e-5, 1e-6
D, H, K = 12, 24, 4


def blocks(rng, n, k, dtype=np.float32):
    """An ``n x n`` weight of k equal blocks, rows and columns shuffled: the hidden permutation."""
    w = (np.kron(np.eye(k), np.ones((n // k, n // k))) * rng.uniform(0.5, 1, (n, n)) * rng.choice([-1, 1], (n, n)))
    return w[rng.permutation(n)][:, rng.permutation(n)].astype(dtype)


def chain_model(rng, between, layers=1, extra_outputs=(), partition=None):
    """x -> Gemm "in" (dense, D->H) -> Relu -> [MatMul "L{i}" (H->H, blocks) -> between(i)]*layers -> Gemm "out".

    With ``partition`` every blocked layer uses the same shuffled partition of H (chains that match)."""
    nodes = [helper.make_node("Gemm", ["x", "W_in", "b_in"], ["g"], name="in", transB=1),
             helper.make_node("Relu", ["g"], ["h0"])]
    inits = [tensor("W_in", (rng.standard_normal((H, D)) / np.sqrt(D)).astype(np.float32)),
             tensor("b_in", rng.standard_normal(H).astype(np.float32))]
    for i in range(layers):
        if partition is None:
            w = blocks(rng, H, K)
        else:
            w = (partition[:, None] == partition[None, :]) * rng.standard_normal((H, H)) / np.sqrt(H / K)
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"B{i}"], [f"m{i}"], name=f"L{i}"))
        inits.append(tensor(f"B{i}", w.T.astype(np.float32)))
        more_nodes, more_inits = between(i, f"m{i}", f"h{i + 1}")
        nodes += more_nodes
        inits += more_inits
    nodes.append(helper.make_node("Gemm", [f"h{layers}", "W_out"], ["y"], name="out", transB=1))
    inits.append(tensor("W_out", (rng.standard_normal((3, H)) / np.sqrt(H)).astype(np.float32)))
    outputs = [value("y", ["N", 3])] + [value(name, ["N", H]) for name in extra_outputs]
    return make_model(nodes, [value("x", ["N", D])], outputs, inits)


def per_feature(rng):
    def between(i, x, y):
        return ([helper.make_node("Add", [x, f"c{i}"], [f"a{i}"]),
                 helper.make_node("Mul", [f"s{i}", f"a{i}"], [f"p{i}"]),
                 helper.make_node("Cast", [f"p{i}"], [f"q{i}"], to=TensorProto.FLOAT),
                 helper.make_node("Sigmoid", [f"q{i}"], [y])],
                [tensor(f"c{i}", rng.standard_normal(H).astype(np.float32)),
                 tensor(f"s{i}", rng.standard_normal((1, H)).astype(np.float32))])
    return between


def relu(i, x, y):
    return [helper.make_node("Relu", [x], [y])], []


def decompose(model, form, chains=False):
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    ops = {n.name: n for n in graph.nodes}
    sites = node_sites(graph)
    plans = {sites[name]: plan_from_support(ops[name].inputs[1].values.T != 0) for name in ops if name.startswith("L")}
    fold = plan_folding(graph, plans)
    FoldPermutation(fold)(graph)
    emitted = BlockRewrite(fold.plans, chosen={site: form for site in plans})(graph).artifact
    if chains:
        KeepBlockLayout(emitted)(graph)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out, fold


def assert_same(rng, model, out):
    for batch in (1, 4):
        x = rng.standard_normal((batch, D)).astype(np.float32)
        for expected, actual in zip(run(model, {"x": x}), run(out, {"x": x})):
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def test_folding_through_per_feature_nodes_removes_every_runtime_permutation(rng):
    model = chain_model(rng, per_feature(rng))
    out, fold = decompose(model, Batched())
    assert {"Gather", "GatherElements"}.isdisjoint(op_types(out))
    assert op_types(out).count("MatMul") == 1  # the batched node
    assert_same(rng, model, out)


def _residual(i, x, y):
    return [helper.make_node("Relu", [x], [f"r{i}"]), helper.make_node("Add", [f"r{i}", f"h{i}"], [y])], []


def _softmax(i, x, y):
    return [helper.make_node("Softmax", [x], [y], axis=-1)], []


@pytest.mark.parametrize("case", ["residual", "graph output", "softmax"])
def test_folding_is_refused_where_a_permuted_tensor_has_another_reader(rng, case):
    """The input of L0 is also read by a residual Add, is a graph output, or L0's output feeds Softmax:
    that side keeps its runtime permutation and the result stays exact."""
    between = {"residual": _residual, "graph output": relu, "softmax": _softmax}[case]
    extra = ["h0"] if case == "graph output" else []
    model = chain_model(rng, between, extra_outputs=extra)
    out, fold = decompose(model, Batched())
    refused = {site.node: reason for site, reason in fold.refused.items()}
    if case == "softmax":
        assert "Softmax" in refused["L0"] and "in" not in refused
        assert op_types(out).count("GatherElements") == 1  # the unpermute; the input side was folded
    else:
        assert "in" in refused and op_types(out).count("GatherElements") >= 1
    assert_same(rng, model, out)


@pytest.mark.parametrize("form", [Batched(), BlockEinsum()], ids=["batched", "einsum"])
def test_chain_of_matching_layers_stays_in_block_layout(rng, form):
    partition = rng.permutation(np.repeat(np.arange(K), H // K))
    model = chain_model(rng, relu, layers=4, partition=partition)

    out, _ = decompose(model, form, chains=True)

    types = op_types(out)
    core = "MatMul" if form.name == "batched" else "Einsum"
    first, last = types.index(core), len(types) - 1 - types[::-1].index(core)
    assert types.count(core) == 4
    assert set(types[first:last + 1]) == {core, "Relu"}  # no Gather, Concat, Split, Reshape between
    assert {"Gather", "GatherElements", "Concat", "Split", "Slice"}.isdisjoint(types)
    assert_same(rng, model, out)


def test_chain_keeps_bias_and_per_feature_constants_exact(rng):
    partition = rng.permutation(np.repeat(np.arange(K), H // K))
    model = chain_model(rng, per_feature(rng), layers=3, partition=partition)
    out, _ = decompose(model, Batched(), chains=True)
    types = op_types(out)
    assert types.count("MatMul") == 3 and types.count("Transpose") == 2 and types.count("Reshape") == 2
    assert_same(rng, model, out)
