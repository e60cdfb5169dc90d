"""Heads removed whole in the back end (``RemoveHeads``) on a Hugging Face-style attention graph built in code:
the projections lose the removed heads' rows, o their columns, the Reshape constants holding the head count
take the kept count, and the rewritten model equals the model it was planned on in ONNX Runtime; blocks
whose heads cannot be removed are refused with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from conftest import make_model, node_sites, op_types, run, tensor, value
from onnx_decomp_passes import HeadsPlan, PassError, RemoveHeads, find_weighted_ops, head_region
from onnx_decomp_passes.plan import whole_heads

S, H, DH = 5, 4, 3
D = H * DH
KEPT = whole_heads(np.array([1, 3]), DH)


def bert_like(rng, extra: str = ""):
    """x [N, S, D], mask [N, 1, 1, S] -> q, k, v (MatMul + Add) -> Reshape [0, 0, H, DH] -> Transpose ->
    Q K^T / sqrt(DH) + mask -> Softmax -> A V -> Transpose -> Reshape [0, 0, D] -> o (MatMul + Add); o's
    columns of heads 0 and 2 are zero. ``extra``: "alibi" adds a per-head constant to the scores, "probs"
    makes the probabilities a graph output, "computed" computes the split shape from x's."""
    nodes, inits = [], [tensor("merge", np.array([0, 0, D])), tensor("scale", np.float32(np.sqrt(DH)))]
    if extra == "computed":  # Hugging Face's x.size()[:-1] + (H, DH) as the legacy exporter writes it
        nodes += [helper.make_node("Shape", ["x"], ["xs"]), helper.make_node("Slice", ["xs", "zero", "two"], ["lead"]),
                  helper.make_node("Concat", ["lead", "tail"], ["split"], axis=0)]
        inits += [tensor("zero", np.array([0])), tensor("two", np.array([2])), tensor("tail", np.array([H, DH]))]
    else:
        inits.append(tensor("split", np.array([0, 0, H, DH])))
    for name in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"W{name}"], [f"{name}m"], name=name),
                  helper.make_node("Add", [f"{name}m", f"b{name}"], [f"{name}b"]),
                  helper.make_node("Reshape", [f"{name}b", "split"], [f"{name}r"], name=f"{name}_split"),
                  helper.make_node("Transpose", [f"{name}r"], [f"{name}t"], perm=[0, 2, 3, 1] if name == "k"
                                   else [0, 2, 1, 3])]
        inits += [tensor(f"W{name}", rng.standard_normal((D, D)).astype(np.float32)),
                  tensor(f"b{name}", rng.standard_normal(D).astype(np.float32))]
    wo = rng.standard_normal((D, D)).astype(np.float32)  # stored [in, out]: rows are o's input features
    wo[np.setdiff1d(np.arange(D), KEPT)] = 0.0
    scores = "masked"
    nodes += [helper.make_node("MatMul", ["qt", "kt"], ["qk"]), helper.make_node("Div", ["qk", "scale"], ["sc"]),
              helper.make_node("Add", ["sc", "mask"], ["masked"])]
    if extra == "alibi":
        nodes.append(helper.make_node("Add", ["masked", "alibi"], ["biased"]))
        inits.append(tensor("alibi", rng.standard_normal((1, H, 1, S)).astype(np.float32)))
        scores = "biased"
    nodes += [helper.make_node("Softmax", [scores], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "vt"], ["av"]),
              helper.make_node("Transpose", ["av"], ["at"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["at", "merge"], ["merged"], name="merge_heads"),
              helper.make_node("MatMul", ["merged", "Wo"], ["om"], name="o"),
              helper.make_node("Add", ["om", "bo"], ["y"])]
    inits += [tensor("Wo", wo), tensor("bo", rng.standard_normal(D).astype(np.float32))]
    outputs = [value("y", ["N", S, D])] + ([value("probs", ["N", H, S, S])] if extra == "probs" else [])
    return make_model(nodes, [value("x", ["N", S, D]), value("mask", ["N", 1, 1, S])], outputs, inits)


def shapes_of(model, n=2):
    """Every tensor's inferred shape at batch ``n``, by name."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for graph_input in fixed.graph.input:
        graph_input.type.tensor_type.shape.dim[0].dim_value = n
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}


def plans(sites):
    out = {sites[name]: HeadsPlan(D, D, rows=KEPT, heads=H) for name in "qkv"}
    out[sites["o"]] = HeadsPlan(D, D, cols=KEPT, heads=H)
    return out


def test_removed_heads_shrink_the_projections_and_the_head_count_constants_and_equal_the_model(rng):
    model = bert_like(rng)
    graph = gs.import_onnx(model)
    result = RemoveHeads(plans(node_sites(graph)), shapes_of(model))(graph)
    out = gs.export_onnx(graph.cleanup())
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)

    assert result.modified and sorted(n.name for r in result.artifact for n, _ in r.rewrites) == \
        ["k_split", "merge_heads", "q_split", "v_split"]
    weights = {op.node.name: op.shape for op in find_weighted_ops(gs.import_onnx(out))[0]}
    assert weights == {"q": (2 * DH, D), "k": (2 * DH, D), "v": (2 * DH, D), "o": (D, 2 * DH)}
    reshapes = {n.name: onnx.numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == n.input[1]))
                for n in out.graph.node if n.op_type == "Reshape"}
    assert {name: shape.tolist() for name, shape in reshapes.items()} == {
        "q_split": [0, 0, 2, DH], "k_split": [0, 0, 2, DH], "v_split": [0, 0, 2, DH], "merge_heads": [0, 0, 2 * DH]}
    assert op_types(out) == op_types(model)
    assert shapes_of(out, 3)["probs"] == [3, 2, S, S]  # the attention products run on 2 heads
    for batch in (1, 3):
        feeds = {"x": rng.standard_normal((batch, S, D)).astype(np.float32),
                 "mask": np.where(rng.random((batch, 1, 1, S)) < 0.2, -1e4, 0.0).astype(np.float32)}
        np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra, reason", [("alibi", "alibi varies along the heads"),
                                           ("probs", "probs holds the heads and is a graph output"),
                                           ("computed", "the head count sits in a shape computed in the graph")])
def test_a_block_whose_heads_cannot_be_removed_is_refused_with_the_reason(rng, extra, reason):
    model = bert_like(rng, extra)
    graph = gs.import_onnx(model)
    ops = {op.node.name: op for op in find_weighted_ops(graph)[0]}
    assert reason in head_region([ops[name] for name in "qkv"], ops["o"], H, shapes_of(model))
    with pytest.raises(PassError, match=reason):
        RemoveHeads(plans(node_sites(graph)), shapes_of(model))(graph)


def test_a_heads_plan_keeps_whole_heads():
    assert HeadsPlan(D, D, rows=KEPT, heads=H).kept_heads().tolist() == [1, 3]
    with pytest.raises(ValueError, match="whole heads"):
        HeadsPlan(D, D, rows=KEPT[1:], heads=H)
