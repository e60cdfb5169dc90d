"""Differential testing: generated graphs, decomposed with validation off, run before and after in ONNX Runtime.

The graphs are chains and DAGs over one input ``x [batch, *lead, d]`` (dynamic batch, rank 2-4, opset
11-21): MatMul and Gemm layers whose weights hold planted blocks under random row and column permutations
(or none), activations, residual Adds, bias Adds, Transposes of the middle axes, a Reshape to 2-D, If
branches and Loop bodies with weights of their own under names the outer graph also uses, weights shared by
two layers, and names that look like the ones the rewrite generates. Correctness never rests on validation:
``check=0``, then both models run on fresh inputs at two batch sizes (and both If branches).

``ONNX_DECOMP_DIFFERENTIAL_EXAMPLES=N`` runs N random examples instead of the fixed CI set.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import onnx_decomp
from conftest import ANY_BLOCKS, make_model, run, tensor, value
from onnx_decomp import ValidationConfig

EXAMPLES = int(os.environ.get("ONNX_DECOMP_DIFFERENTIAL_EXAMPLES", "0"))
SETTINGS = settings(max_examples=EXAMPLES or 150, derandomize=not EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def block_weight(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
    """``W [n_out, n_in]``: rows and columns dealt at random into k groups (k = 1 is dense), entries kept
    only inside matching groups; some rows and columns may stay empty."""
    k = int(rng.integers(1, 5))
    row_group, col_group = rng.integers(0, k + 1, n_out), rng.integers(0, k + 1, n_in)  # group k: empty
    keep = (row_group[:, None] == col_group[None, :]) & (row_group[:, None] < k)
    return (rng.standard_normal((n_out, n_in)) * keep).astype(np.float32)


class Graph:
    """The graph being generated: nodes, initializers, and the feature tensors one may build on."""

    def __init__(self, draw, opset: int, rank: int):
        self.draw, self.opset = draw, opset
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        self.nodes, self.inits, self.extra_inputs = [], [], []
        self.count = 0
        lead = tuple(draw(st.integers(1, 3)) for _ in range(rank - 2))
        self.tensors = [("x", draw(st.integers(2, 9)), lead)]  # (name, features, middle dims)

    def name(self, kind: str) -> str:
        """A new name; sometimes one that looks like the rewrite's own (``mm0/W0``)."""
        self.count += 1
        looks_generated = self.draw(st.booleans())
        return f"mm{self.count - 1}/{kind}0" if looks_generated else f"{kind}_{self.count}"

    def weight(self, n_out: int, n_in: int, name: str = "") -> str:
        name = name or self.name("W")
        self.inits.append(tensor(name, block_weight(self.rng, n_out, n_in).T.copy()))  # MatMul holds W.T
        return name

    def pick(self):
        return self.draw(st.sampled_from(self.tensors))

    def add(self, op: str, inputs, out_features: int, lead, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.tensors.append((out, out_features, lead))
        return out

    def matmul(self):
        src, d, lead = self.pick()
        d_out = self.draw(st.integers(2, 9))
        shared = [t.name for t in self.inits if list(t.dims) == [d, d_out]]
        weight = self.draw(st.sampled_from(shared)) if shared and self.draw(st.booleans()) else self.weight(d_out, d)
        self.add("MatMul", [src, weight], d_out, lead)

    def gemm(self):
        flat = [t for t in self.tensors if not t[2]]
        if not flat:
            src, d, lead = self.pick()
            shape = self.name("shape")
            self.inits.append(tensor(shape, np.array([-1, d], np.int64)))
            flat = [(self.add("Reshape", [src, shape], d, ()), d, ())]
        src, d, _ = self.draw(st.sampled_from(flat))
        d_out = self.draw(st.integers(2, 9))
        trans_b = self.draw(st.booleans())
        w = block_weight(self.rng, d_out, d)
        name = self.name("W")
        self.inits.append(tensor(name, w if trans_b else w.T.copy()))
        inputs = [src, name]
        bias_shape = self.draw(st.sampled_from([None, (d_out,), (1, d_out), ()]))
        if bias_shape is not None:
            inputs.append(self.name("C"))
            self.inits.append(tensor(inputs[-1], self.rng.standard_normal(bias_shape).astype(np.float32)))
        self.add("Gemm", inputs, d_out, (), transB=int(trans_b), alpha=self.draw(st.sampled_from([1.0, 0.5])),
                 beta=self.draw(st.sampled_from([1.0, 2.0])))

    def activation(self):
        src, d, lead = self.pick()
        ops = ["Relu", "Tanh", "Sigmoid"] + (["Gelu"] if self.opset >= 20 else [])
        self.add(self.draw(st.sampled_from(ops)), [src], d, lead)

    def add_bias_or_residual(self):
        src, d, lead = self.pick()
        same = [t for t in self.tensors if t[1:] == (d, lead) and t[0] != src]
        if same and self.draw(st.booleans()):
            other = self.draw(st.sampled_from(same))[0]
        else:
            other = self.name("bias")
            self.inits.append(tensor(other, self.rng.standard_normal(d).astype(np.float32)))
        self.add("Add", [src, other], d, lead)

    def transpose(self):
        src, d, lead = self.pick()
        if len(lead) == 2:
            self.add("Transpose", [src], d, lead[::-1], perm=[0, 2, 1, 3])

    def branch(self, src: str, d: int, lead, d_out: int, tag: str, weight: str):
        """A subgraph computing ``src @ W`` with a local initializer named like an outer one."""
        out = f"{tag}_out_{self.count}"
        inits = [tensor(weight, block_weight(self.rng, d_out, d).T.copy())]
        node = helper.make_node("MatMul", [src, weight], [out], name=f"{tag}_mm_{self.count}")
        return helper.make_graph([node], f"{tag}_{self.count}", [], [value(out, ["batch", *lead, d_out])], inits)

    def if_node(self):
        src, d, lead = self.pick()
        d_out = self.draw(st.integers(2, 9))
        outer = self.weight(d_out, d)  # the name both branches reuse for their own weights
        if "c" not in [i.name for i in self.extra_inputs]:
            self.extra_inputs.append(value("c", [], TensorProto.BOOL))
        self.add("If", ["c"], d_out, lead, then_branch=self.branch(src, d, lead, d_out, "then", outer),
                 else_branch=self.branch(src, d, lead, d_out, "else", outer))

    def loop_node(self):
        src, d, lead = self.pick()
        trips, keep = self.name("trips"), self.name("keep")
        self.inits += [tensor(trips, np.array(2, np.int64)), tensor(keep, np.array(True))]
        weight = self.weight(d, d)  # outer weight; the body holds its own of the same name
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("MatMul", ["v_in", weight], ["v_mm"], name=f"body_mm_{self.count}"),
             helper.make_node("Tanh", ["v_mm"], ["v_out"])], f"body_{self.count}",
            [value("i", [], TensorProto.INT64), value("cond_in", [], TensorProto.BOOL),
             value("v_in", ["batch", *lead, d])],
            [value("cond_out", [], TensorProto.BOOL), value("v_out", ["batch", *lead, d])],
            [tensor(weight, block_weight(self.rng, d, d).T.copy())])
        self.add("Loop", [trips, keep, src], d, lead, body=body)

    def model(self) -> onnx.ModelProto:
        out, d, lead = self.tensors[-1]
        outputs = [value(out, ["batch", *lead, d])]
        inputs = [value("x", ["batch", *self.tensors[0][2], self.tensors[0][1]]), *self.extra_inputs]
        return make_model(self.nodes, inputs, outputs, self.inits, opset=self.opset)


@st.composite
def models(draw):
    graph = Graph(draw, opset=draw(st.integers(11, 21)), rank=draw(st.integers(2, 4)))
    layers = [graph.matmul, graph.gemm, graph.activation, graph.add_bias_or_residual, graph.transpose,
              graph.if_node, graph.loop_node]
    graph.matmul()
    for _ in range(draw(st.integers(0, 5))):
        draw(st.sampled_from(layers))()
    graph.matmul()
    return graph.model()


@pytest.mark.slow
@SETTINGS
@given(models())
def test_decomposition_never_changes_outputs(model):
    rewritten, _ = onnx_decomp.decompose(model, gate=ANY_BLOCKS, validation=ValidationConfig(check=0))

    onnx.checker.check_model(rewritten, full_check=True)
    rng = np.random.default_rng(0)
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    conditions = [True, False] if len(model.graph.input) > 1 else [None]
    for batch in (1, 3):
        for condition in conditions:
            feeds = {"x": rng.standard_normal((batch, *x_shape)).astype(np.float32)}
            if condition is not None:
                feeds["c"] = np.array(condition)
            for after, before in zip(run(rewritten, feeds), run(model, feeds)):
                np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
