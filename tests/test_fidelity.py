"""The fidelity gate's metrics and the exact comparison, on outputs whose answer is known."""

from __future__ import annotations

import pytest

import numpy as np

from onnx_decomp.search.fidelity import exact_difference, fidelity, output_fidelity


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
