"""all-MiniLM-L6-v2 and its docstring pairs (issue 16): the model loads offline from its PyPI package and its
ONNX export embeds real pairs as PyTorch does; the committed pairs are the ones this interpreter's standard
library gives, deterministic, and calibration and evaluation share no module and no text; retrieval ranks
as ``minilm_eval`` says."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")
from onnx_decomp_models import minilm, minilm_data  # noqa: E402
from onnx_decomp_models.minilm_eval import eval_inputs, retrieval  # noqa: E402
from conftest import run  # noqa: E402


@pytest.mark.slow
def test_the_export_embeds_real_pairs_as_pytorch_does_and_is_made_once(tmp_path):
    path = minilm.ensure_model(tmp_path / "model.onnx")
    written = path.stat().st_mtime_ns
    assert minilm.ensure_model(path).stat().st_mtime_ns == written
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"MatMul", "Softmax"} <= ops and not ops & {"Attention", "MultiHeadAttention"}
    assert [i.name for i in model.graph.input] == list(minilm.INPUTS)
    assert all(d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim)
    metadata = {p.key: p.value for p in model.metadata_props}
    nulls = [k for k, v in metadata.items() if k.startswith("onnx_decomp.null/") and v == minilm.INIT]
    assert len(nulls) == 6 * 6 + 3  # every Linear weight of the 6 layers and the 3 embeddings

    rows = np.r_[0:3, 1000:1003]  # three evaluation pairs: summaries and their bodies
    inputs = {name: array[rows] for name, array in eval_inputs().items()}
    short = {name: array[:, :24] for name, array in inputs.items()}  # another sequence length
    pytorch = minilm.load()
    for feed in (inputs, short):
        np.testing.assert_allclose(run(model, feed)[0], minilm.torch_embeddings(pytorch, feed), rtol=1e-4, atol=1e-4)


def test_the_committed_pairs_are_deterministic_and_calibration_and_evaluation_are_disjoint():
    pairs, digest = minilm_data.corpus_pairs()
    calib, evaluation = minilm_data.split(pairs)
    assert (calib, evaluation) == minilm_data.split(pairs)
    assert len(calib) == minilm_data.CALIB and len(evaluation) == minilm_data.EVAL >= 800
    assert not {p.module for p in calib} & {p.module for p in evaluation}
    assert not set(minilm_data.texts(calib)) & set(minilm_data.texts(evaluation))
    committed = json.loads((minilm_data.OUT / "pairs.json").read_text())
    if committed["corpus_sha256"] != digest:
        pytest.skip("another Python version: another standard library")
    for name, chosen in (("calib", calib), ("eval", evaluation)):
        assert [(p["module"], p["name"], p["summary"], p["body"]) for p in committed[name]] == \
            [(p.module, p.name, p.summary, p.body) for p in chosen]
        with np.load(minilm_data.OUT / f"{name}.npz") as data:
            encoded = minilm.encode(minilm_data.texts(chosen))
            assert sorted(data.files) == sorted(minilm.INPUTS)
            for key in minilm.INPUTS:
                np.testing.assert_array_equal(data[key], encoded[key])


def test_retrieval_ranks_each_summary_against_every_body():
    bodies = np.eye(4)
    summaries = np.eye(4)[[0, 1, 3, 2]] + 0.1 * np.eye(4)  # pairs 2 and 3 point at each other's body
    summaries /= np.linalg.norm(summaries, axis=1, keepdims=True)
    recall, mrr = retrieval(np.vstack([summaries, bodies]))
    assert recall == 0.5 and mrr == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
