"""Choosing a form per node: the cost model's choice is decision data, ``--tune`` keeps the fastest measured
form, every named batch size is judged, and a rewrite is never kept slower than dense at any of them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_decomp
from conftest import hidden_blocks, make_model, op_types, run, tensor, value
from onnx_decomp import GateConfig
from onnx_decomp.cli import main
from onnx_decomp.config import FORMS as FORM_NAMES
from onnx_decomp.cost.estimate import MEASURED
from onnx_decomp.cost.isolate import one_node_models
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.shapes import InputSpec
from onnx_decomp_passes import FORMS


def matmul(w):
    return make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", ["N", w.shape[1]])],
                      [value("y", ["N", w.shape[0]])], [tensor("B", w.T.copy())])


def contiguous(d, k, rng):
    return (np.kron(np.eye(k), np.ones((d // k, d // k))) * rng.standard_normal((d, d))).astype(np.float32)


def test_cost_gate_estimates_every_form_at_every_batch_and_keeps_the_best(rng):
    model = matmul(contiguous(512, 8, rng))
    gate = GateConfig("cost", forms=FORM_NAMES, batches=(1, 32))
    out, report = onnx_decomp.decompose(model, gate=gate)
    node = report.nodes[0]
    costs = {(c["form"], c["batch"]): c["estimated"] for c in node.costs}
    assert set(costs) == {(f, b) for f in FORM_NAMES for b in (1, 32)}
    assert all(c["measured"] is None for c in node.costs)  # the cost gate times nothing
    worst = {f: min(costs[f, 1], costs[f, 32]) for f in FORM_NAMES}
    assert node.form == max(worst, key=worst.get) and node.estimated == pytest.approx(worst[node.form], abs=1e-3)
    assert node.action == "rewrite" and node.speedup is None
    assert onnx_decomp.decompose(model, gate=gate)[1].nodes[0].form == node.form  # deterministic


def test_tune_times_every_form_and_keeps_the_fastest_measured(rng):
    model = matmul(contiguous(256, 4, rng))
    out, report = onnx_decomp.decompose(model, gate=GateConfig(tune=True, forms=("branches", "batched"),
                                                               batches=(4,), min_speedup=1e-6))
    node = report.nodes[0]
    measured = {c["form"]: c["measured"] for c in node.costs}
    assert set(measured) == {"branches", "batched"} and None not in measured.values()
    assert node.form == max(measured, key=measured.get) and node.speedup == pytest.approx(measured[node.form], abs=1e-3)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_a_rewrite_slower_than_dense_at_any_named_batch_is_kept_dense(rng):
    """Two scattered 8x8 blocks: every form's gathers cost more than 2x fewer MACs save, at batch 1 and 64."""
    w, _ = hidden_blocks(rng, [(8, 8), (8, 8)])
    out, report = onnx_decomp.decompose(matmul(w), gate=GateConfig(batches=(1, 64)))
    node = report.nodes[0]
    assert node.action == "keep" and node.reason.startswith("measured") and node.speedup < 1.1
    assert {c["batch"] for c in node.costs if c["measured"] is not None} == {1, 64}
    assert node.speedup == min(c["measured"] for c in node.costs if c["measured"] is not None)
    assert op_types(out) == ["MatMul"]


def test_batch_sizes_set_symbolic_first_dims_only(rng):
    w = contiguous(64, 4, rng)
    fixed = make_model([helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")], [value("x", [3, 64])],
                       [value("y", [3, 64])], [tensor("B", w.T.copy())])
    _, report = onnx_decomp.decompose(fixed, gate=GateConfig("cost", batches=(1, 8)))
    assert {c["batch"] for c in report.nodes[0].costs} == {1, 8}  # judged, at the model's own batch of 3
    with pytest.raises(UnsupportedConstructError, match="batch sizes"):
        GateConfig(batches=(0,))
    with pytest.raises(UnsupportedConstructError, match="form"):
        GateConfig(forms=("dense",))


@pytest.mark.parametrize("option", [["--forms", "dense"], ["--batch", "0,64"], ["--batch", "x"]])
def test_bad_form_or_batch_options_exit_2(tmp_path, rng, capsys, option):
    path = tmp_path / "m.onnx"
    onnx.save(matmul(contiguous(16, 2, rng)), path)
    code = main(["decompose", str(path), str(tmp_path / "out.onnx"), *option])
    err = capsys.readouterr().err
    assert code == 2 and option[0] in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_the_plan_emitted_is_the_plan_costed_and_every_emitted_node_names_its_site_and_block(rng):
    """L1 (two blocks) is eligible but the cost gate keeps it dense; L2 (eight blocks reading other groups of
    the hidden units) is rewritten. Folding was decided over both when L2's form was costed: the rewrite applies
    that decision, so L2's emitted nodes are those of its costed one-node rewrite, each tagged with L2's site
    (and its block where it serves one)."""
    hidden = 256
    a = rng.permutation(np.repeat(np.arange(2), hidden // 2))
    b = rng.permutation(np.repeat(np.arange(8), hidden // 8))
    w1 = ((a[:, None] == np.repeat(np.arange(2), 4)[None, :]) * rng.standard_normal((hidden, 8))).astype(np.float32)
    w2 = ((np.repeat(np.arange(8), hidden // 8)[:, None] == b[None, :]) *
          rng.standard_normal((hidden, hidden))).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["x", "W1"], ["h"], name="L1", transB=1),
                        helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("MatMul", ["r", "W2"], ["y"], name="L2")],
                       [value("x", ["N", 8])], [value("y", ["N", hidden])],
                       [tensor("W1", w1), tensor("W2", w2.T.copy())])
    gate = GateConfig("cost", forms=("branches",), batches=(64,))
    out, _ = onnx_decomp.decompose(model, gate=gate)

    decisions = {d.node: d for d in onnx_decomp.inspect(model, gate=gate).decisions}  # the same, deterministic
    assert decisions["L1"].action.value == "keep" and decisions["L2"].rewrite
    candidate = decisions["L2"].candidate
    _, costed = one_node_models(candidate, FORMS["branches"], (64, hidden), candidate.op.graph)
    tags = {node.name: {p.key: p.value for p in node.metadata_props} for node in out.graph.node}
    emitted = [node for node in out.graph.node if tags[node.name].get("onnx_decomp.node") == "L2"]
    assert sorted(n.op_type for n in emitted) == sorted(n.op_type for n in costed.graph.node)
    assert all(tags[n.name]["onnx_decomp.weight"] == "W2" for n in emitted)
    blocks = {tags[n.name]["onnx_decomp.block"] for n in emitted if n.op_type == "MatMul"}
    assert blocks == {str(branch.block) for branch in candidate.folded.branches} and len(blocks) == 8
    x = rng.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", FORM_NAMES)
def test_the_cost_model_estimates_from_shapes_alone_without_a_copy_of_the_weight(rng, form):
    """The cost model's one-node models hold the tensors over SMALL_TENSOR elements as placeholders: the same
    estimate as with the values, and no weight bytes (8 blocks of 64 x 64 here)."""
    hidden = 512
    groups = np.repeat(np.arange(8), hidden // 8)
    mask = groups[:, None] == rng.permutation(groups)[None, :]
    w = (mask * rng.standard_normal((hidden, hidden))).astype(np.float32)
    candidate = onnx_decomp.inspect(matmul(w), gate=GateConfig("cost", batches=(64,))).decisions[0].candidate
    spec = [InputSpec("x", np.dtype(np.float32), (64, hidden))]
    valued = one_node_models(candidate, FORMS[form], (64, hidden), candidate.op.graph)
    bare = one_node_models(candidate, FORMS[form], (64, hidden), candidate.op.graph, shapes_only=True)
    assert len(candidate.plan.branches) == 8
    for full, placeholders in zip(valued, bare):
        assert MEASURED.graph_us(placeholders, spec) == MEASURED.graph_us(full, spec)
        assert [n.op_type for n in placeholders.graph.node] == [n.op_type for n in full.graph.node]
        assert placeholders.ByteSize() < 16 * 1024 < hidden * hidden * 4 // 8 < full.ByteSize()
