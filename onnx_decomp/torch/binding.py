"""Which PyTorch parameter each ONNX initializer holds.

Rule, in order:

1. By name: an initializer named like a parameter (its fully qualified name, ``"0.weight"``,
   ``"enc.layers.1.linear1.bias"``) whose value equals the parameter exactly. The dynamo exporter names
   the initializers it copies from parameters this way; so does the legacy (TorchScript) exporter for
   the weights it keeps as they are (Gemm ``transB=1``).
2. By value: every parameter not bound by name binds to the first initializer (in graph order) whose value
   equals it exactly, else to the first that equals its transpose (a 2-D parameter only). Exporters copy
   values bit for bit, so exact equality is the test. This finds the weights both exporters transpose for
   MatMul (3-D inputs, attention projections) and rename (``val_12`` for dynamo, ``onnx::MatMul_381`` for
   legacy): Gemm(transB=1) holds ``[out, in]`` like ``nn.Linear.weight``, MatMul holds ``[in, out]``.

One initializer may stand for several parameters: the dynamo exporter stores equal tensors once (layers
cloned from one template, zero biases before training). A parameter folded into arithmetic by the exporter
(scaled, fused) matches nothing and stays unbound. Float initializers only, in the graph and its subgraphs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnx_decomp.io.walk import iter_graphs
from onnx_decomp_passes import Layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """An initializer holds ``parameter`` (``transposed=False``) or its transpose (``transposed=True``)."""

    parameter: str
    transposed: bool

    def layout(self, initializer: Layout) -> Layout:
        """How the parameter holds ``W [n_out, n_in]`` when the initializer holds it in ``initializer``
        (``Layout.OUT_IN``: as ``nn.Linear.weight`` does)."""
        return initializer.flipped() if self.transposed else initializer


def float_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every floating-point initializer of the graph and its subgraphs, by name, in graph order."""
    found = {}
    for graph in iter_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                    onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
                found.setdefault(tensor.name, numpy_helper.to_array(tensor))
    return found


def _key(value: np.ndarray) -> tuple:
    """Identity of a tensor's exact value: dtype, shape and a digest of its bytes."""
    value = np.ascontiguousarray(value)
    return value.dtype.str, value.shape, hashlib.blake2b(value.tobytes(), digest_size=16).digest()


def bind_initializers(initializers: Mapping[str, np.ndarray],
                      parameters: Mapping[str, np.ndarray]) -> dict[str, tuple[Binding, ...]]:
    """Initializer name -> the parameters it holds (module rule). Unbound initializers are left out."""
    by_value: dict[tuple, str] = {}
    for name, value in initializers.items():
        by_value.setdefault(_key(value), name)
    bound: dict[str, list[Binding]] = {}
    for name, value in parameters.items():
        if name in initializers and _key(initializers[name]) == _key(value):
            bound.setdefault(name, []).append(Binding(name, transposed=False))
            continue
        direct = by_value.get(_key(value))
        flipped = by_value.get(_key(value.T)) if value.ndim == 2 and direct is None else None
        if direct is None and flipped is None:
            logger.debug("parameter %s matches no initializer (folded or not exported)", name)
            continue
        init_name = flipped if direct is None else direct
        bound.setdefault(init_name, []).append(Binding(name, transposed=direct is None))
    return {name: tuple(bindings) for name, bindings in bound.items()}


def load_initializers(model: torch.nn.Module, initializers: Mapping[str, np.ndarray],
                      bindings: Mapping[str, tuple[Binding, ...]]) -> list[str]:
    """Copy initializer values into the parameters ``bindings`` binds them to (transposed where bound
    transposed): weights exported from this architecture, e.g. refitted or trained ones, back into the model.
    Returns the parameters loaded; bindings naming no initializer of ``initializers`` are skipped."""
    parameters = dict(model.named_parameters())
    loaded = []
    with torch.no_grad():
        for name, group in bindings.items():
            if name not in initializers:
                continue
            for binding in group:
                value = initializers[name].T if binding.transposed else initializers[name]
                parameters[binding.parameter].copy_(torch.tensor(value))
                loaded.append(binding.parameter)
    return loaded
