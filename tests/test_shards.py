"""Shards (``distributed.shards``, ``distributed.inference``, ``onnx_decomp_passes.shards``): a planted chain of
three independent sub-networks (MatMul + bias -> Relu -> Gemm, rows and columns permuted) is written as three
shard models and a manifest, and their merged output equals the model's in one process and on Ray actors; a
chain whose groups meet is refused in one line and writes nothing; ``onnx-decomp shard`` writes and proves them;
an annealed chain splits under the plans annealing found."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_decomp
from conftest import make_model, run, tensor, value
from onnx_decomp.context import ModelContext
from onnx_decomp.distributed.cluster import import_ray, pids
from onnx_decomp.distributed.inference import ShardRunner, run_shards
from onnx_decomp.distributed.shards import Manifest, write_shards
from onnx_decomp.errors import DecompError, InvalidModelError, UnsupportedConstructError, ValidationError
from onnx_decomp.planning.support import AnnealedSupport
from onnx_decomp_models.synthetic import independent_chain
from onnx_decomp_passes import BlockPlan, Branch, plan_from_support
from test_cli import cli  # noqa: F401  (the fixture: the CLI in this process)

N_IN, HIDDEN, N_OUT = (3, 4, 5), (4, 6, 6), (2, 3, 3)  # per group
RTOL = ATOL = 1e-5


def _groups(rng, sizes):
    """Indices of a permuted feature axis, cut into groups of ``sizes``."""
    order = rng.permutation(sum(sizes))
    return np.split(order, np.cumsum(sizes)[:-1])


def _chain(crossed: str = "") -> tuple[onnx.ModelProto, tuple[list, list]]:
    """x [N, 12] -> MatMul + b1 -> Relu -> Gemm(transB=1, alpha 0.5, C) -> y [N, 8], each weight zero outside its
    group's (rows x cols), and each group's input columns and hidden features; ``crossed`` ``W1``: each group's
    first hidden feature also reads an input column of the next group, ``W2``: its first output a hidden feature
    of the next group."""
    rng = np.random.default_rng(0)
    ins, hidden, outs = _groups(rng, N_IN), _groups(rng, HIDDEN), _groups(rng, N_OUT)
    w1, w2 = np.zeros((sum(HIDDEN), sum(N_IN)), np.float32), np.zeros((sum(N_OUT), sum(HIDDEN)), np.float32)
    for g in range(len(N_IN)):
        w1[np.ix_(hidden[g], ins[g])] = rng.standard_normal((HIDDEN[g], N_IN[g]))
        w2[np.ix_(outs[g], hidden[g])] = rng.standard_normal((N_OUT[g], HIDDEN[g]))
    for g in range(len(N_IN)):
        after = (g + 1) % len(N_IN)
        if crossed == "W1":
            w1[hidden[g][0], ins[after][0]] = 1.0
        if crossed == "W2":
            w2[outs[g][0], hidden[after][0]] = 1.0
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "C2"], ["y"], name="gemm2", transB=1, alpha=0.5)]
    weights = [tensor("W1", w1.T), tensor("b1", rng.standard_normal(sum(HIDDEN)).astype(np.float32)),
               tensor("W2", w2), tensor("C2", rng.standard_normal(sum(N_OUT)).astype(np.float32))]
    return make_model(nodes, [value("x", ["N", sum(N_IN)])], [value("y", ["N", sum(N_OUT)])], weights), (ins, hidden)


def _plans(model: onnx.ModelProto) -> dict:
    """Each weight's plan: the components of its nonzero pattern."""
    return {op.site: plan_from_support(op.matrix() != 0) for op in ModelContext.load(model).ops}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((7, sum(N_IN))).astype(np.float32)


@pytest.fixture
def written(tmp_path):
    model, _ = _chain()
    return model, write_shards(model, _plans(model), tmp_path / "shards")


def test_a_planted_chain_becomes_one_shard_per_group(written, x):
    model, manifest = written
    assert len(manifest.shards) == 3
    data = json.loads((manifest.folder / "manifest.json").read_text())
    assert Manifest.load(manifest.folder).to_dict() == data == manifest.to_dict()
    assert data["merge"]["op"] == "Concat" and data["shards"][0]["file"] == "shard0.onnx"
    assert sorted(np.concatenate([s.cols for s in manifest.shards]).tolist()) == list(range(sum(N_IN)))
    assert sorted(len(s.rows) for s in manifest.shards) == sorted(N_OUT)
    for shard in manifest.shards:
        ops = [node.op_type for node in onnx.load(manifest.path(shard)).graph.node]
        assert ops == ["Gather", "MatMul", "Add", "Relu", "MatMul", "Add"]
    merged = run_shards(manifest.folder, {"x": x})
    np.testing.assert_allclose(merged["y"], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_shards_on_ray_actors_give_the_same_output(written, x):
    try:
        ray = import_ray(local=True)
    except DecompError:
        pytest.skip("Ray is not installed")
    model, manifest = written
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # a logical CPU per shard actor
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        with ShardRunner(manifest, "ray") as runner:
            assert len(set(pids(runner.actors))) == 3
            runner.ping()
            merged = runner(x)
    finally:
        ray.shutdown()
    np.testing.assert_allclose(merged, run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_groups_reading_shared_input_columns_stay_independent(tmp_path, x):
    model, (ins, hidden) = _chain(crossed="W1")
    plans = _plans(model)
    first = next(site for site in plans if site.node == "mm1")
    assert len(plans[first].branches) == 1  # the nonzero pattern's components join the groups at the input
    reads = [np.union1d(ins[g], ins[(g + 1) % len(ins)][:1]) for g in range(len(ins))]
    plans[first] = BlockPlan(sum(HIDDEN), sum(N_IN), tuple(Branch(hidden[g], reads[g]) for g in range(len(ins))))
    manifest = write_shards(model, plans, tmp_path / "shards")
    assert sorted(s.cols.tolist() for s in manifest.shards) == sorted(cols.tolist() for cols in reads)
    np.testing.assert_allclose(run_shards(manifest, {"x": x})["y"], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("crossed", ["W1", "W2"])
def test_groups_that_meet_are_refused_in_one_line(tmp_path, crossed):
    model, _ = _chain(crossed)
    with pytest.raises(UnsupportedConstructError) as raised:
        write_shards(model, _plans(model), tmp_path / "shards")
    assert str(raised.value) == ("cannot shard <ModelProto>: the groups of mm1 -> gemm2 are not independent end to "
                                 "end: every output depends on one sub-network")
    assert not (tmp_path / "shards").exists()


def test_a_layer_without_a_plan_is_refused(tmp_path):
    model, _ = _chain()
    plans = {site: plan for site, plan in _plans(model).items() if site.node != "gemm2"}
    with pytest.raises(UnsupportedConstructError, match=r"^cannot shard <ModelProto>: gemm2 has no block plan"):
        write_shards(model, plans, tmp_path / "shards")


def test_a_manifest_whose_merge_disagrees_with_its_rows_is_refused(written):
    _, manifest = written
    data = manifest.to_dict()
    data["merge"]["inverse"] = data["merge"]["inverse"][::-1]
    (manifest.folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InvalidModelError, match="is not a shard manifest of format 'onnx-decomp shards 1'"):
        Manifest.load(manifest.folder)


def test_the_shard_command_writes_the_shards_and_proves_them_merged(tmp_path, cli, x):
    model, _ = _chain()
    path, folder, summary = tmp_path / "chain.onnx", tmp_path / "shards", tmp_path / "shards.json"
    onnx.save(model, path)
    result = cli("shard", path, folder, "--json", summary)
    assert result.returncode == 0, result.stderr
    assert "3 independent sub-networks (exact support)" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard0.onnx", "shard1.onnx", "shard2.onnx"]
    data = json.loads(summary.read_text())
    assert data["validation"]["ok"] and data["validation"]["outputs"][0]["max_abs"] <= ATOL
    assert sorted(s["rows"] for s in data["shards"]) == sorted(N_OUT)
    assert sum(s["matmul_flops"] for s in data["shards"]) < data["model_matmul_flops"]  # zeros are not computed
    np.testing.assert_allclose(run_shards(folder, {"x": x})["y"], run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_a_chain_that_does_not_split_is_refused_by_the_command_in_one_line_and_nothing_written(tmp_path, cli):
    model, _ = _chain(crossed="W2")
    path, folder, summary = tmp_path / "chain.onnx", tmp_path / "shards", tmp_path / "shards.json"
    onnx.save(model, path)
    result = cli("shard", path, folder, "--json", summary)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not independent end to end" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.onnx"]


def test_shards_under_plans_that_drop_weights_the_model_uses_fail_validation(tmp_path):
    """Annealed plans (``AnnealedSupport``: a plan per cut layer, the nonzero pattern elsewhere) are masks: where
    they leave out nonzero weights, the merged shards are not the model, and the proof says so."""
    model, (ins, hidden) = _chain(crossed="W1")
    first = next(op.site for op in ModelContext.load(model).ops if op.site.node == "mm1")
    groups = BlockPlan(sum(HIDDEN), sum(N_IN), tuple(Branch(hidden[g], ins[g]) for g in range(len(ins))))
    with pytest.raises(ValidationError) as raised:
        onnx_decomp.shard(model, tmp_path / "shards", support=AnnealedSupport({first: groups}))
    assert not raised.value.report.validation.ok and len(raised.value.report.shards) == 3
    assert raised.value.report.validation.outputs[0].rel_l2 > 1e-3


def test_an_annealed_chain_is_sharded_under_the_plans_annealing_found(tmp_path):
    """Two sub-networks planted under init-like noise (``independent_chain``): annealing cuts the noise, and the
    masked, refitted model under its plans (``AnnealedSupport``) splits into them, merged equal to the annealed
    model on held-out inputs."""
    path = tmp_path / "noisy.onnx"
    onnx.save(independent_chain(64, 2, 2, noise=0.3, seed=5), path)
    rng = np.random.default_rng(5)
    calib, held_out = (rng.standard_normal((n, 64)).astype(np.float32) for n in (256, 16))
    annealed, report = onnx_decomp.anneal(path, {"x": calib}, metric="rel-l2", tolerance=0.2, gate="flops",
                                          config=onnx_decomp.AnnealConfig(families=("chain",), bootstrap=0))
    assert [len(plan.branches) for plan in report.plans.values()] == [2, 2]
    result = onnx_decomp.shard(report.masked, tmp_path / "shards", support=AnnealedSupport(report.plans))
    assert result.validation.ok and [(s.cols, s.rows) for s in result.shards] == [(32, 32), (32, 32)]
    merged = run_shards(tmp_path / "shards", {"x": held_out})["r1"]
    np.testing.assert_allclose(merged, run(annealed, {"x": held_out})[0], rtol=RTOL, atol=ATOL)
