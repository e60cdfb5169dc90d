"""onnx_decomp.torch.export: ONNX Runtime reproduces PyTorch with either exporter and any batch size (or any
size of every dim named dynamic), every initializer is bound to the parameter it holds (by name, by value,
transposed), the initialization is recorded in the metadata and the reference model, and no node keeps
torch's stack trace (local paths)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.model_io import load_model
from onnx_decomp.stats.null_models import NULL_KEY_PREFIX, REFERENCE_KEY, nulls_from_metadata
from onnx_decomp.torch import export, record_init
from onnx_decomp_passes import find_weighted_ops


pytestmark = pytest.mark.slow  # every test here exports with torch or trains


class TinyTransformer(torch.nn.Module):
    """Token embedding -> 2 post-norm encoder layers (attention + FFN, residuals, LayerNorm) -> head."""

    def __init__(self):
        super().__init__()
        self.token = torch.nn.Embedding(10, 16)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, tokens):
        return self.head(self.encoder(self.token(tokens)).mean(1))


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def pretend_training(model):
    """Move every parameter a little, as training would (layers cloned from one template then differ)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


MODELS = {"mlp": (mlp, lambda batch: torch.randn(batch, 8)),
          "transformer": (TinyTransformer, lambda batch: torch.randint(0, 10, (batch, 5)))}


def ort_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_round_trip_with_dynamic_batch(tmp_path, kind, dynamo):
    torch.manual_seed(0)
    build, inputs = MODELS[kind]
    model = build()
    init = record_init(model)
    pretend_training(model)

    exported = export(model, (inputs(3),), tmp_path / "model.onnx", init, dynamo=dynamo)

    session = ort_session(exported.path)
    assert session.get_inputs()[0].shape[0] == "batch"
    model.eval()
    for batch in (1, 5):
        x = inputs(batch)
        with torch.no_grad():
            expected = model(x).numpy()
        (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # one file, no staging left behind


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_weight_is_bound_to_its_parameter_by_value_in_its_layout(tmp_path, kind, dynamo):
    torch.manual_seed(0)
    build, inputs = MODELS[kind]
    model = pretend_training(build())
    parameters = {name: p.detach().numpy() for name, p in model.named_parameters()}

    exported = export(model, (inputs(3),), tmp_path / "model.onnx", dynamo=dynamo)

    values = initializers(exported.path)
    bound = {}
    for name, group in exported.bindings.items():
        for binding in group:
            expected = parameters[binding.parameter]
            assert np.array_equal(values[name], expected.T if binding.transposed else expected)
            bound[binding.parameter] = name
    matrices = {name for name, value in parameters.items() if value.ndim == 2}
    assert matrices <= set(bound)  # every weight matrix (embeddings included) found
    # Gemm(transB=1) holds W [out, in] like nn.Linear; MatMul holds W.T: either way W is the parameter
    ops, _ = find_weighted_ops(gs.import_onnx(onnx.load(str(exported.path))))
    assert ops
    for op in ops:
        (binding,) = exported.bindings[op.weight.name]
        assert np.array_equal(op.matrix(), parameters[binding.parameter])
    if kind == "transformer":  # attention and FFN weights read 3-D activations: MatMul, renamed, transposed
        assert any(b.transposed and name != b.parameter for name, group in exported.bindings.items() for b in group)


def test_layers_cloned_from_one_template_share_one_initializer(tmp_path):
    torch.manual_seed(0)
    model = TinyTransformer()  # untrained: both encoder layers hold equal tensors, stored once

    exported = export(model, (torch.randint(0, 10, (3, 5)),), tmp_path / "model.onnx")

    holders = {b.parameter: name for name, group in exported.bindings.items() for b in group}
    assert holders["encoder.layers.0.linear1.weight"] == holders["encoder.layers.1.linear1.weight"]
    assert set(holders) == {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_metadata_and_reference_model_record_the_initialization(tmp_path, dynamo):
    torch.manual_seed(0)
    model = TinyTransformer()
    init = record_init(model, overrides={"head.weight": "normal(sigma=0.02)", "token.*": "reference"})
    initial = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    pretend_training(model)
    assert np.array_equal(init.tensors["head.weight"], initial["head.weight"])  # a copy, not a view

    exported = export(model, (torch.randint(0, 10, (3, 5)),), tmp_path / "model.onnx", init, dynamo=dynamo,
                      reference_path=tmp_path / "ref" / "init.onnx")

    proto = onnx.load(str(exported.path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata[REFERENCE_KEY] == "ref/init.onnx"
    expected_specs = {}
    for name, group in exported.bindings.items():
        specs = {init.specs[b.parameter] for b in group if b.parameter in init.specs}
        if specs:
            expected_specs[name] = specs.pop()
    assert {k[len(NULL_KEY_PREFIX):]: v for k, v in metadata.items() if k.startswith(NULL_KEY_PREFIX)} == expected_specs
    by_parameter = {b.parameter: name for name, group in exported.bindings.items() for b in group}
    assert expected_specs[by_parameter["head.weight"]] == "normal(sigma=0.02)"
    assert expected_specs[by_parameter["token.weight"]] == "reference"
    assert expected_specs[by_parameter["encoder.layers.1.self_attn.in_proj_weight"]] == "xavier-uniform"
    assert expected_specs[by_parameter["encoder.layers.0.linear2.weight"]] == "torch-linear"
    assert len(nulls_from_metadata(metadata)) == len(expected_specs)  # the analyzer parses every spec

    reference = load_model(tmp_path / "ref" / "init.onnx")  # a valid model (onnx.checker)
    stored = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    assert set(stored) == set(exported.bindings)
    for name, (first, *_) in exported.bindings.items():
        value = initial[first.parameter]
        assert np.array_equal(stored[name], value.T if first.transposed else value)


def test_external_data_on_request(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    x = torch.randn(2, 64)

    exported = export(model, (x,), tmp_path / "model.onnx", record_init(model), external_data=True)

    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(ort_session(exported.path).run(None, {"input": x.numpy()})[0], expected,
                               rtol=1e-5, atol=1e-6)


SEQUENCES = {"transformer": (TinyTransformer, lambda b, s: torch.randint(0, 10, (b, s)), "tokens"),
             "mlp": (mlp, lambda b, s: torch.randn(b, s, 8), "input")}


@pytest.mark.parametrize("dynamo, kind", [(True, "transformer"), (False, "mlp")], ids=["dynamo", "torchscript"])
def test_every_dim_named_dynamic_takes_any_size_and_no_stack_trace_is_kept(tmp_path, dynamo, kind):
    """(TorchScript traces attention's head split at the example's length, so its case is an MLP on
    sequences.)"""
    torch.manual_seed(0)
    build, inputs, name = SEQUENCES[kind]
    model = build().eval()
    exported = export(model, (inputs(3, 5),), tmp_path / "model.onnx", dynamo=dynamo,
                      dynamic_shapes={name: {0: "batch", 1: torch.export.Dim("sequence", max=64)}})

    session = ort_session(exported.path)
    assert session.get_inputs()[0].shape[:2] == ["batch", "sequence"]
    for batch, sequence in ((1, 9), (4, 2)):
        x = inputs(batch, sequence)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {name: x.numpy()})[0], expected, rtol=1e-5, atol=1e-6)
    proto = onnx.load(str(exported.path))
    assert not [p for n in proto.graph.node for p in n.metadata_props if p.key == "pkg.torch.onnx.stack_trace"]


def test_dynamic_shapes_must_name_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"dynamic_shapes names no input: \['x'\]"):
        export(mlp(), (torch.randn(3, 8),), tmp_path / "model.onnx", dynamic_shapes={"x": {0: "batch"}})
    assert not os.listdir(tmp_path)


def test_fixed_batch_when_asked(tmp_path):
    exported = export(mlp(), (torch.randn(3, 8),), tmp_path / "model.onnx", dynamic_batch=False,
                      input_names=["features"])
    assert ort_session(exported.path).get_inputs()[0].shape == [3, 8]
    assert ort_session(exported.path).get_inputs()[0].name == "features"


def test_a_batch_the_exporter_fixed_is_refused(tmp_path):
    with pytest.raises(ValueError, match="example batch of 2 or more"):
        export(TinyTransformer(), (torch.randint(0, 10, (1, 5)),), tmp_path / "model.onnx")
    assert not os.listdir(tmp_path)


def test_record_init_defaults_overrides_and_refusals():
    model = TinyTransformer()
    init = record_init(model)
    assert init.specs["head.weight"] == "torch-linear"
    assert init.specs["encoder.layers.0.self_attn.out_proj.weight"] == "torch-linear"
    assert init.specs["encoder.layers.0.self_attn.in_proj_weight"] == "xavier-uniform"
    assert init.specs["token.weight"] == "normal(sigma=1)"
    assert "head.bias" not in init.specs and "encoder.layers.0.norm1.weight" not in init.specs
    assert set(init.tensors) == {name for name, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="matches no parameter"):
        record_init(model, overrides={"nothing.*": "xavier-uniform"})
    with pytest.raises(UnsupportedConstructError):
        record_init(model, overrides={"head.weight": "gaussian"})


def test_record_init_warns_when_the_tensor_contradicts_a_uniform_recipe(caplog):
    model = mlp()
    torch.nn.init.normal_(model[0].weight, std=1.0)  # far outside U(-1/sqrt(8), 1/sqrt(8))
    record_init(model)
    assert "0.weight: recipe torch-linear" in caplog.text and "2.weight" not in caplog.text


def test_reference_needs_the_init_record(tmp_path):
    with pytest.raises(ValueError, match="InitRecord"):
        export(mlp(), (torch.randn(3, 8),), tmp_path / "m.onnx", reference_path=tmp_path / "init.onnx")
    assert not os.listdir(tmp_path)
