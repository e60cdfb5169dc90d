"""The ridge refit of a cut layer, against the plain cut."""

from __future__ import annotations

import numpy as np
from onnx import helper

from conftest import make_model, tensor, value
from onnx_decomp.context import ModelContext
from onnx_decomp.search.network import Network
from onnx_decomp.search.refit import Refitter, plain_cut
from onnx_decomp_passes import plan_from_support


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
