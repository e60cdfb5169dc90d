"""The heads family on a tiny CharLM exported by both torch exporters: planted dead heads (o columns near zero)
are exactly the heads removed, the rewritten model (fewer heads, head-count constants rewritten) equals the
masked, refitted dense model in ONNX Runtime, the MACs count the attention products, a head count computed in
the graph is skipped with the reason, and so is a fused attention op."""

from __future__ import annotations

import types

import numpy as np
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import helper

import onnx_decomp
from conftest import IR_VERSION, op_types, run, tensor, value
from onnx_decomp import AnnealConfig, GateConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.io.shapes import concrete_shapes, input_specs
from onnx_decomp.search.evidence import StoredEvidence
from onnx_decomp.search.families import SearchSpace, build_units
from onnx_decomp.search.network import Network
from onnx_decomp.torch import export
from onnx_decomp_models.char_lm import CharLM
from onnx_decomp_passes import HeadsPlan, find_weighted_ops

pytestmark = pytest.mark.slow
HEADS, D, CONTEXT, VOCAB, DEAD = 4, 32, 16, 20, (1, 3)
DH = D // HEADS
EXPORTERS = {"dynamo": True, "legacy": False}


def explicit_heads(block, x):
    """Attention with the head count written out (``view(b, t, H, dh)``, Hugging Face style), not ``-1``."""
    batch, length, _ = x.shape
    heads = [p(x).view(batch, length, HEADS, DH).transpose(1, 2) for p in (block.q, block.k, block.v)]
    mixed = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
    return block.o(mixed.transpose(1, 2).reshape(batch, length, HEADS * DH))


def exported(path, dynamo: bool, dead=DEAD, explicit=False):
    """A one-block CharLM (d_model 32, 4 heads of 8, FFN 64) whose ``dead`` heads' o columns are near zero."""
    torch.manual_seed(0)
    model = CharLM(d_model=D, heads=HEADS, ffn=64, layers=1, context=CONTEXT, vocab=VOCAB)
    block = model.blocks[0]
    with torch.no_grad():
        for head in dead:
            block.o.weight[:, head * DH:(head + 1) * DH] *= 1e-4
    if explicit:
        block.attention = types.MethodType(explicit_heads, block)
    export(model, (torch.randint(0, VOCAB, (2, CONTEXT)),), path, input_names=["tokens"], output_names=["logits"],
           dynamo=dynamo)
    return path


def heads_space(path, rng) -> SearchSpace:
    """What the heads family plans from at batch 3, with o's activations on random tokens."""
    ctx = ModelContext.load(path, {"tokens": [3, CONTEXT]})
    network = Network(ctx)
    taps = network.run([{"tokens": rng.integers(0, VOCAB, (3, CONTEXT))}], taps=True).taps
    return SearchSpace(network, network.shapes, StoredEvidence.write({}), AnnealConfig(families=("heads",)), taps=taps)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_planted_dead_heads_are_removed_and_the_rewrite_equals_the_masked_model(tmp_path, rng, exporter):
    path = exported(tmp_path / "model.onnx", EXPORTERS[exporter])
    tokens = rng.integers(0, VOCAB, (256, CONTEXT))
    out, report = onnx_decomp.anneal(str(path), {"tokens": tokens}, tolerance=0.01, gate=GateConfig("flops"),
                                     config=AnnealConfig(families=("heads",), bootstrap=0))

    (unit,) = report.units
    assert unit.kind == "heads" and unit.rungs == ["keep 3 of 4 heads", "keep 2 of 4 heads", "keep 1 of 4 heads"]
    plans = list(report.plans.values())
    assert len(plans) == 4 and all(isinstance(p, HeadsPlan) for p in plans)
    assert all(p.kept_heads().tolist() == [0, 2] for p in plans)  # exactly the live heads
    assert report.final.exact_ok and report.final.validation <= 0.01
    shapes = sorted(op.shape for op in find_weighted_ops(gs.import_onnx(out))[0])
    assert shapes == sorted([(2 * DH, D)] * 3 + [(D, 2 * DH), (64, D), (D, 64), (VOCAB, D)])
    assert op_types(out) == op_types(report.masked)  # smaller weights and shape constants, nothing else
    softmax = next(n.output[0] for n in out.graph.node if n.op_type == "Softmax")
    shapes = concrete_shapes(out, input_specs(out, {"tokens": [5, CONTEXT]}), data_prop=True)
    assert shapes[softmax] == [5, 2, CONTEXT, CONTEXT]  # the attention products run on the 2 kept heads
    probe = rng.integers(0, VOCAB, (5, CONTEXT))
    np.testing.assert_allclose(run(out, {"tokens": probe})[0], run(report.masked, {"tokens": probe})[0],
                               rtol=1e-5, atol=1e-5)


def test_the_macs_count_attention_products_and_removing_heads_removes_their_share(tmp_path, rng):
    space = heads_space(exported(tmp_path / "model.onnx", dynamo=True), rng)
    network = space.network
    products = 2 * 3 * HEADS * CONTEXT * CONTEXT * DH  # Q K^T and A V at batch 3: they grow with CONTEXT**2
    layers = 3 * CONTEXT * (4 * D * D + 2 * 64 * D + VOCAB * D)
    assert [p.macs for p in network.products] == [products // 2] * 2
    assert network.dense_macs == layers + products
    (unit,) = build_units(space)
    cuts = unit.structure(1, {}).cuts  # keep 2 of 4 heads: half of q, k, v and o, half of the products
    assert network.macs(cuts) == layers - 3 * CONTEXT * 4 * D * D // 2 + products // 2


@pytest.mark.parametrize("exporter, skipped", [("dynamo", False), ("legacy", True)])
def test_a_head_count_computed_in_the_graph_is_skipped_with_the_reason(tmp_path, rng, exporter, skipped):
    """``view(b, t, 4, 8)`` with a dynamic batch: dynamo writes the constant ``[-1, 16, 4, 8]`` (rewritten),
    the legacy exporter concatenates the batch read from the graph with ``4`` and ``8`` (skipped)."""
    space = heads_space(exported(tmp_path / "model.onnx", EXPORTERS[exporter], explicit=True), rng)
    units = build_units(space)
    assert len(units) == (0 if skipped else 1)
    notes = [note for note in space.notes if note.startswith("heads:")]
    assert len(notes) == (1 if skipped else 0)
    assert not skipped or "the head count sits in a shape computed in the graph (4 at entry 2)" in notes[0]


def test_a_fused_attention_op_is_listed_as_skipped(rng):
    nodes = [helper.make_node("Attention", ["x", "Wqkv", "bqkv"], ["a"], name="fused", domain="com.microsoft",
                              num_heads=2),
             helper.make_node("MatMul", ["a", "W"], ["y"], name="fc")]
    inits = [tensor("Wqkv", rng.standard_normal((8, 24)).astype(np.float32)),
             tensor("bqkv", np.zeros(24, np.float32)), tensor("W", rng.standard_normal((8, 8)).astype(np.float32))]
    graph = helper.make_graph(nodes, "fused", [value("x", ["N", 3, 8])], [value("y", ["N", 3, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=IR_VERSION)
    network = Network(ModelContext.load(model, {"x": [2, 3, 8]}))
    space = SearchSpace(network, network.shapes, StoredEvidence.write({}), AnnealConfig(families=("heads",)))
    assert build_units(space) == []
    assert space.notes == ["heads: Attention node 'fused' skipped: a fused attention op keeps its heads inside one "
                           "kernel's packed weights"]
