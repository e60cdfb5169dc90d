"""The annealing report: JSON against its schema, and option values refused when configured."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from onnx import helper

import onnx_decomp
from conftest import ANY_BLOCKS, make_model, tensor, value
from onnx_decomp.config import AnnealConfig, BlockSettings
from onnx_decomp.drivers.anneal import ANNEAL_SCHEMA
from onnx_decomp.errors import UnsupportedConstructError


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
