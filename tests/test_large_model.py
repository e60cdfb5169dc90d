"""A model whose weights live in external data, decomposed from its file: the weights are read from disk
when needed, validated from the file, written tensor by tensor. By default the model is small (the same code
paths in seconds); ``ONNX_DECOMP_LARGE_TEST=1`` makes it 2 GiB of weights, past the protobuf limit (about
a minute and 4 GiB of memory; tools/bench_large_model.py measures time and peak memory)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort

import onnx_decomp
from onnx_decomp import GateConfig, ValidationConfig
from onnx_decomp_models.synthetic import block_chain

LARGE = bool(os.environ.get("ONNX_DECOMP_LARGE_TEST"))
LAYERS, WIDTH, BLOCKS = (8, 8192, 8) if LARGE else (3, 512, 8)


def test_external_data_model_is_decomposed_validated_and_written_from_disk(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    try:
        path, weight_bytes = block_chain(inputs, LAYERS, WIDTH, BLOCKS)
        assert (weight_bytes >= 2**31) == LARGE  # past the protobuf limit, 2**31 - 1
        files = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in inputs.iterdir()}

        rewritten, report = onnx_decomp.decompose(path, gate=GateConfig("flops", forms=("branches",)),
                                                  input_shapes={"x": [2, WIDTH]},
                                                  validation=ValidationConfig(check=1))
        onnx_decomp.save_model(rewritten, outputs / "out.onnx", external_data=True)

        assert report.validation.ok and [d.candidate.plan.flop_reduction for d in report.planned] == [BLOCKS] * LAYERS
        written = onnx.load(outputs / "out.onnx", load_external_data=False)
        assert [n.op_type for n in written.graph.node].count("MatMul") == LAYERS * BLOCKS
        blocks = [t for t in written.graph.initializer if len(t.dims) == 2]
        assert len(blocks) == LAYERS * BLOCKS and sum(4 * np.prod(t.dims) for t in blocks) * BLOCKS == weight_bytes
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in blocks)
        assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in inputs.iterdir()} == files  # untouched
        x = np.random.default_rng(0).standard_normal((2, WIDTH)).astype(np.float32)
        after, before = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                         for p in (outputs / "out.onnx", path))  # from their files: the original is over 2 GiB
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # gigabytes: do not leave them for pytest to keep
