"""The evidence the search plans from lives on disk: every lookup reads it afresh, and its folder goes with
the last view of it."""

import gc

import numpy as np

from onnx_decomp.search.evidence import StoredEvidence


def test_every_lookup_reads_the_evidence_afresh_and_the_folder_goes_with_the_last_view(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    rng = np.random.default_rng(0)
    written = {"w1": rng.random((40, 30)).astype(np.float16), "w2": rng.random((5, 7)).astype(np.float16)}
    store = StoredEvidence.write(written)
    view = store.keyed({"site1": "w1", "site2": "w2", "site3": "unanalysed"})
    del store
    first, second = view["site1"], view["site1"]
    assert first.dtype == np.float16 and not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, written["w1"])
    np.testing.assert_array_equal(view["site2"], written["w2"])
    assert view["site3"] is None and view.get("site4") is None and list(view) == ["site1", "site2", "site3"]
    assert len(list(tmp_path.iterdir())) == 1
    del view
    gc.collect()
    assert list(tmp_path.iterdir()) == []
