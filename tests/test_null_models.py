"""Null models by value, and the planted-signal recovery the criterion must achieve under each."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_decomp.stats.criterion import benjamini_hochberg, storey_pi0
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.stats.null_models import (NullSpec, Normal, TruncNormal, Uniform, choose_null, nulls_from_metadata,
                                     parse_null_spec, parse_user_nulls)

SHAPE = (120, 150)  # n_out, n_in
Q = 0.05


def test_fan_in_and_fan_out_by_value():
    w = np.zeros((30, 7))
    assert parse_null_spec("torch-linear").build(w) == Uniform(1 / math.sqrt(7))
    assert parse_null_spec("kaiming-uniform(a=0)").build(w) == Uniform(math.sqrt(6 / 7))
    assert parse_null_spec("kaiming-normal").build(w) == Normal(math.sqrt(2 / 7))
    assert parse_null_spec("xavier-uniform").build(w) == Uniform(math.sqrt(6 / 37))
    assert parse_null_spec("xavier-normal").build(w) == Normal(math.sqrt(2 / 37))
    assert parse_null_spec("trunc-normal(sigma=0.02)").build(w) == TruncNormal(0.02, 0.04)
    assert parse_null_spec("trunc-normal(sigma=0.02, bound=2)").build(w) == TruncNormal(0.02, 2.0)


def test_uniform_p_value_rule():
    np.testing.assert_allclose(Uniform(0.5).sf_abs(np.array([0.0, -0.25, 0.5, 0.9])), [1.0, 0.5, 0.0, 0.0])


@pytest.mark.parametrize("text,message", [("bogus", "unknown null"), ("normal", "needs sigma"),
                                          ("normal(sigma=-1)", "positive"), ("xavier-uniform(a=1)", "bad parameter"),
                                          ("normal(sigma=x)", "bad parameter")])
def test_parser_errors(text, message):
    with pytest.raises(UnsupportedConstructError, match=message):
        parse_null_spec(text)


def test_selection_order_metadata_then_user_then_guess():
    recorded = nulls_from_metadata({"onnx_decomp.null/fc1.weight": "normal(sigma=0.02)", "other": "x"})
    rules = parse_user_nulls(["fc*=xavier-uniform", "kaiming-normal"])
    assert choose_null("fc1.weight", recorded, rules).source == "metadata"
    assert choose_null("fc2.weight", recorded, rules).spec == NullSpec("xavier-uniform")
    assert choose_null("head.weight", recorded, rules).spec == NullSpec("kaiming-normal")
    guess = choose_null("head.weight", recorded, [])
    assert (str(guess.spec), guess.source) == ("torch-linear", "guess")


def _draw(name: str, rng, shape=SHAPE):
    """A fresh tensor from the null and a scale that null makes very unlikely to reach."""
    fan_out, fan_in = shape
    spec = parse_null_spec(name)
    null = spec.build(np.zeros(shape))
    if isinstance(null, Uniform):
        return rng.uniform(-null.bound, null.bound, shape), 1.5 * null.bound
    if isinstance(null, TruncNormal):
        w = rng.standard_normal(shape) * null.sigma
        while (np.abs(w) >= null.bound).any():
            outside = np.abs(w) >= null.bound
            w[outside] = rng.standard_normal(outside.sum()) * null.sigma
        return w, 1.2 * null.bound
    sigma = null.sigma if isinstance(null, Normal) and null.sigma > 0 else 0.05
    return rng.standard_normal(shape) * sigma, 7 * sigma


NULLS = ["torch-linear", "kaiming-uniform(a=1)", "kaiming-normal", "xavier-uniform", "xavier-normal",
         "normal(sigma=0.02)", "trunc-normal(sigma=0.02)", "empirical"]


@pytest.mark.parametrize("name", NULLS)
def test_planted_signal_recovered_with_fdr_control(name):
    recovered, fdp = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        w, big = _draw(name, rng)
        planted = rng.random(SHAPE) < 0.1  # BH holds the FDR at pi0 * q = 0.045 on average
        w[planted] = big * (1 + rng.random(planted.sum())) * rng.choice([-1, 1], planted.sum())
        confirmed = benjamini_hochberg(parse_null_spec(name).build(w).sf_abs(w), Q)
        recovered.append(confirmed[planted].mean())
        fdp.append((confirmed & ~planted).sum() / max(confirmed.sum(), 1))
    assert min(recovered) >= 0.99
    assert np.mean(fdp) <= Q


@pytest.mark.parametrize("name", NULLS)
def test_fresh_initialization_is_unconfirmed(name):
    w, _ = _draw(name, np.random.default_rng(7))
    p = parse_null_spec(name).build(w).sf_abs(w)
    assert benjamini_hochberg(p, Q).mean() < 0.001
    assert storey_pi0(p) > 0.95


def test_reference_null_tests_the_update():
    rng = np.random.default_rng(3)
    w0 = rng.uniform(-0.1, 0.1, SHAPE)
    w = w0.copy()
    touched = rng.random(SHAPE) < 0.1
    w[touched] += rng.standard_normal(touched.sum()) * 0.01
    null = parse_null_spec("reference").build(w, initial=w0)
    p = null.sf_abs(w)
    assert (p[~touched] == 1).all() and benjamini_hochberg(p, Q)[touched].mean() > 0.99
    with pytest.raises(UnsupportedConstructError, match="initial tensor"):
        parse_null_spec("reference").build(w)


def test_the_reference_null_holds_the_initial_tensor_as_stored_and_tests_it_in_float64():
    rng = np.random.default_rng(3)
    w0 = rng.uniform(-0.1, 0.1, SHAPE).astype(np.float32)
    w = w0 + (rng.random(SHAPE) < 0.1) * np.float32(1e-3)
    null = parse_null_spec("reference").build(w, initial=w0)
    assert null.initial.dtype == np.float32 and np.shares_memory(null.initial, w0)  # not a float64 copy
    expected = Normal(null.rounding).sf_abs(w.astype(np.float64) - w0.astype(np.float64))
    np.testing.assert_array_equal(null.sf_abs(w), expected)
