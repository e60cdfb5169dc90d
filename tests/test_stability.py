"""Stability of accepted partitions: the adjusted Rand index against scikit-learn's."""

from __future__ import annotations

import pytest
from sklearn.metrics import adjusted_rand_score

from onnx_decomp.search.stability import adjusted_rand_index


def test_adjusted_rand_index_agrees_with_scikit_learn(rng):
    for _ in range(5):
        a, b = rng.integers(0, 4, 60), rng.integers(0, 3, 60)
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))
    same = rng.integers(0, 5, 40)
    assert adjusted_rand_index(same, (same + 2) % 5) == pytest.approx(1.0)
