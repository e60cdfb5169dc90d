"""The parts of annealing on their own: fidelity metrics, calibration split and batching, the adjusted Rand
index, the ridge refit, plans built from labels, and the report's JSON schema."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from onnx import helper
from sklearn.metrics import adjusted_rand_score

import onnx_decomp
from conftest import ANY_BLOCKS, make_model, tensor, value
from onnx_decomp.config import AnnealConfig, BlockSettings
from onnx_decomp.context import ModelContext
from onnx_decomp.errors import DecompError, UnsupportedConstructError
from onnx_decomp.planning.coclustering import blocks_plan
from onnx_decomp.drivers.anneal import ANNEAL_SCHEMA
from onnx_decomp.search.calibration import calibration
from onnx_decomp.search.fidelity import exact_difference, fidelity, output_fidelity
from onnx_decomp.search.network import Network
from onnx_decomp.search.refit import Refitter, plain_cut
from onnx_decomp.search.stability import adjusted_rand_index
from onnx_decomp_passes import plan_from_support


def test_metrics_on_known_outputs():
    original = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [4.0, 0.0, 0.0]])
    candidate = original.copy()
    candidate[1] = [0.0, 1.0, 1.5]  # argmax moves from 1 to 2
    labels = np.array([0, 1, 2, 1])  # the original gets 3 of 4 right, the candidate 2 of 4
    assert output_fidelity("rel-l2", original, candidate) == pytest.approx(np.sqrt(1 + 1.5 ** 2) / np.sqrt(30))
    assert output_fidelity("max-abs", original, candidate) == pytest.approx(1.5)
    assert output_fidelity("top1", original, candidate) == pytest.approx(0.25)
    assert output_fidelity("accuracy", original, candidate, labels) == pytest.approx(0.25)
    # the worst float output counts; integer outputs are ignored; accuracy reads labelled outputs only
    ints = np.arange(4)
    assert fidelity("top1", [original, original, ints], [original, candidate, ints + 1], [None] * 3) == 0.25
    assert fidelity("accuracy", [original, original], [candidate, candidate], [None, labels]) == 0.25
    assert exact_difference([original], [original + 1e-7], 1e-5, 0.0) == (pytest.approx(1e-7), False)
    assert exact_difference([original], [original + 1e-7], 1e-5, 1e-6)[1]


def test_adjusted_rand_index_agrees_with_scikit_learn(rng):
    for _ in range(5):
        a, b = rng.integers(0, 4, 60), rng.integers(0, 3, 60)
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))
    same = rng.integers(0, 5, 40)
    assert adjusted_rand_index(same, (same + 2) % 5) == pytest.approx(1.0)


def fixed_batch_model(rng, batch=4):
    return make_model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1, name="fc")],
                      [value("x", [batch, 6])], [value("y", [batch, 3])],
                      [tensor("W", rng.standard_normal((3, 6)).astype(np.float32)),
                       tensor("b", np.zeros(3, np.float32))])


def test_calibration_splits_batches_and_drops_what_fills_no_fixed_batch(rng):
    ctx = ModelContext.load(fixed_batch_model(rng))
    x = rng.standard_normal((23, 6))  # float64 on purpose: cast to the input's type

    data = calibration(ctx, AnnealConfig(held_out=0.5), {"x": x, "other": np.zeros(3)})

    assert data.batch == 4 and data.source == "file"
    assert len(data.tuning) == 8 and len(data.held_out) == 12  # 11 and 12 samples, cut to whole batches
    assert all(batch["x"].shape == (4, 6) and batch["x"].dtype == np.float32 for batch in data.batches(data.tuning))
    assert data.notes == ["3 tuning sample(s) fill no batch of 4 and are dropped"]
    with pytest.raises(DecompError, match=r"lacks arrays for the model inputs \['x'\]"):
        calibration(ctx, AnnealConfig(), {"y": x})
    with pytest.raises(DecompError, match="names no output"):
        calibration(ctx, AnnealConfig(), {"x": x}, labels={"logits": np.zeros(23)})
    random = calibration(ctx, AnnealConfig())
    assert random.source == "random" and "random inputs" in random.warnings[0]
    given = calibration(ctx, AnnealConfig(), {"x": x}, inputs={"x": x[:8] + 1, "y": np.zeros(8, np.int64)})
    assert given.validation == "--inputs" and len(given.held_out) == 8 and len(given.tuning) == 20
    assert "y" in given.held_out.labels  # labels of the validation set ride in the --inputs file


def test_refit_reproduces_a_layer_whose_cut_part_is_predictable_from_what_it_keeps(rng):
    """Inputs come in copies (x_j and x_j + noise): a cut that keeps one copy loses nothing a refit cannot
    win back, and the refit must win it back on new data; the plain cut cannot."""
    base = rng.standard_normal((400, 8))
    x = np.hstack([base, base + 0.01 * rng.standard_normal((400, 8))]).astype(np.float32)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1, name="fc")],
                       [value("x", ["N", 16])], [value("y", ["N", 6])],
                       [tensor("W", w), tensor("b", np.ones(6, np.float32))])
    network = Network(ModelContext.load(model))
    (layer,) = network.layers
    keep = np.zeros((6, 16), bool)
    keep[:, :8] = True  # read the first copy only
    plan = plan_from_support(keep)
    fit, new = x[:200], x[200:]

    refitted = Refitter()(layer, plan, fit, fit)
    plain = plain_cut(layer, plan)

    def error(stored):
        return np.linalg.norm(new @ layer.matrix(stored).T + layer.bias_vector(stored) - (new @ w.T + 1)) / \
            np.linalg.norm(new @ w.T + 1)

    assert error(refitted) < 0.02 < 0.3 < error(plain)
    assert np.all(layer.matrix(refitted)[:, 8:] == 0)


def test_report_json_follows_its_schema_and_bad_options_are_refused(rng, tmp_path):
    model = make_model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1, name="fc")],
                       [value("x", ["N", 8])], [value("y", ["N", 8])],
                       [tensor("W", np.kron(np.eye(2), np.ones((4, 4))).astype(np.float32)),
                        tensor("b", np.zeros(8, np.float32))])
    _, report = onnx_decomp.anneal(model, {"x": rng.standard_normal((64, 8))}, gate=ANY_BLOCKS,
                                   report_dir=tmp_path / "anneal")
    jsonschema.validate(report.to_dict(), ANNEAL_SCHEMA)
    assert (tmp_path / "anneal" / "anneal.png").stat().st_size > 0
    assert report.to_dict()["plans"]["W"]["blocks"] == 2
    for bad in (dict(metric="f1"), dict(tolerance=-1.0), dict(held_out=1.0)):
        with pytest.raises(UnsupportedConstructError):
            AnnealConfig(**bad)
    with pytest.raises(UnsupportedConstructError):
        BlockSettings(blocks=1)


def test_blocks_plan_equals_the_components_of_its_support(rng):
    for _ in range(5):
        rows, cols = rng.integers(0, 4, 30), rng.integers(0, 5, 20)  # label 4 has columns but no rows
        rows_kept, cols_kept = rng.random(30) < 0.8, rng.random(20) < 0.7
        support = (rows[:, None] == cols[None, :]) & rows_kept[:, None] & cols_kept[None, :]
        fast, slow = blocks_plan(rows, cols, rows_kept, cols_kept), plan_from_support(support)
        assert [(b.rows.tolist(), b.cols.tolist()) for b in fast.branches] == \
            [(b.rows.tolist(), b.cols.tolist()) for b in slow.branches]
        assert sorted(fast.constant_rows.tolist()) == sorted(slow.constant_rows.tolist())
