"""Can channel removal or grouping make PaddleOCR 1.5x faster than fp32 and 1.2x faster than static int8?
Speed only: the variants' weights are slices, their outputs meaningless.

    python tools/ocr_feasibility.py                # rec and det, batch 1 and 8

Variants of the packaged fp32 model (inputs fixed: rec 48 x 320, det 640 x 640), each also quantized the way
``tools/ocr_peers.py`` measured best (the library's ``int8-static``: static QDQ, per-channel weights, Conv,
MatMul and Gemm only):
- ``half``: every channel set (the channels one or more 1 x 1 Convs write, followed through BatchNormalization,
  activations, per-channel Mul/Add, pools, Resize, depthwise Convs and squeeze-excitation gates to the Convs
  that read them) keeps its first half, where no Add of two computed tensors, Concat or other op couples it;
  the writers lose output channels, depthwise Convs and BatchNormalization channels, the readers input
  channels;
- ``grouped g``: every 1 x 1 Conv whose channel counts divide by g becomes a Conv of g groups (same channels).
Speed: ``bench_models`` (one intra-op thread, that thread's CPU time, medians of interleaved rounds); "x int8"
is the median over rounds of the int8 model's time over the variant's int8 time.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_decomp.config import SessionConfig
from onnx_decomp.drivers.bench import bench_models
from onnx_decomp.report.table import table
from onnx_decomp.runtime.quantize import prepared, quantize
from onnx_decomp_models import ocr, ocr_data, ocr_graph

PASS_THROUGH = {"BatchNormalization", "Relu", "Clip", "HardSigmoid", "Sigmoid", "HardSwish", "Identity",
                "GlobalAveragePool", "AveragePool", "MaxPool", "Resize"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
TIMING = SessionConfig("cpu", threads=1, spin=False)


def channel_axis(constant: np.ndarray):
    """The channel axis of a per-channel constant broadcast against [N, C, H, W] ([C, 1, 1] or [1, C, 1, 1])."""
    if constant.ndim >= 3 and constant.shape[-2:] == (1, 1) and constant.shape[-3] > 1:
        return constant.ndim - 3
    return None


class Spaces:
    """Union-find over tensors that share one channel axis (axis 1), with what blocks each set."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.blocked: set[str] = set()

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, *names: str) -> None:
        roots = [self.find(n) for n in names]
        for root in roots[1:]:
            if root != roots[0]:
                self.parent[root] = roots[0]
                if root in self.blocked:
                    self.blocked.add(roots[0])

    def block(self, *names: str) -> None:
        self.blocked.update(self.find(n) for n in names)

    def is_blocked(self, name: str) -> bool:
        return self.find(name) in self.blocked


def channel_spaces(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> Spaces:
    """The channel sets of the module docstring; a set is blocked where some op couples or reshapes it."""
    spaces = Spaces()
    for node in model.graph.node:
        computed = [i for i in node.input if i and i not in weights]
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            if ocr_graph.conv_kind(node, w.shape) == "depthwise" and w.shape[0] == ocr_graph.attribute(node, "group"):
                spaces.union(node.input[0], node.output[0])
            elif ocr_graph.conv_kind(node, w.shape) == "grouped":
                spaces.block(node.input[0], node.output[0])
            else:  # its input and output channels are independent sets
                spaces.find(node.input[0])
                spaces.find(node.output[0])
        elif node.op_type in PASS_THROUGH:
            spaces.union(node.input[0], node.output[0])
        elif node.op_type in ELEMENTWISE:
            spaces.union(*computed, node.output[0])
            constants = [weights[i] for i in node.input if i in weights]
            if (node.op_type in ("Add", "Sub") and len(computed) > 1) or any(
                    c.size > 1 and channel_axis(c) is None for c in constants):
                spaces.block(node.output[0])
        else:
            spaces.block(*computed, *node.output)
    spaces.block(*(o.name for o in model.graph.output))
    return spaces


def halved(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The ``half`` variant (module docstring) and how many channel sets it halved."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    spaces = channel_spaces(model, weights)
    writers: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "Conv":
            writers[spaces.find(node.output[0])].append(node)
    cut = {}  # channel set -> channels kept
    for root, nodes in writers.items():
        kinds = {ocr_graph.conv_kind(n, weights[n.input[1]].shape) for n in nodes}
        if root not in spaces.blocked and "pointwise" in kinds and kinds <= {"pointwise", "depthwise"}:
            channels = {weights[n.input[1]].shape[0] for n in nodes}
            cut[root] = min(channels) // 2
    new = {}  # (node name, input index) -> sliced array

    def keep(name: str):
        return cut.get(spaces.find(name)) if name in spaces.parent else None

    for node in model.graph.node:
        out_k, in_k = keep(node.output[0]), keep(node.input[0]) if node.input else None
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            if out_k:
                new[node.name, 1] = w[:out_k]
                if len(node.input) > 2:
                    new[node.name, 2] = weights[node.input[2]][:out_k]
            if in_k and w.shape[1] != 1:
                new[node.name, 1] = new.get((node.name, 1), w)[:, :in_k]
            if out_k and ocr_graph.conv_kind(node, w.shape) == "depthwise":
                for attr in node.attribute:
                    if attr.name == "group":
                        attr.i = out_k
        elif out_k and (node.op_type == "BatchNormalization" or node.op_type in ELEMENTWISE):
            for index, name in enumerate(node.input):
                if name in weights and node.op_type == "BatchNormalization":
                    new[node.name, index] = weights[name][:out_k]
                elif name in weights and channel_axis(weights[name]) is not None:
                    new[node.name, index] = np.take(weights[name], range(out_k), channel_axis(weights[name]))
    return _replace_inputs(model, new), len(cut)


def grouped(model: onnx.ModelProto, groups: int) -> tuple[onnx.ModelProto, int]:
    """The ``grouped g`` variant (module docstring) and how many Convs it grouped."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    new = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        w = weights[node.input[1]]
        if ocr_graph.conv_kind(node, w.shape) == "pointwise" and w.shape[0] % groups == 0 == w.shape[1] % groups:
            new[node.name, 1] = w[:, :w.shape[1] // groups]
            group = next((a for a in node.attribute if a.name == "group"), None)
            if group is None:
                node.attribute.append(helper.make_attribute("group", groups))
            else:
                group.i = groups
    return _replace_inputs(model, new), len(new)


def _replace_inputs(model: onnx.ModelProto, new: dict) -> onnx.ModelProto:
    """``model`` with node inputs replaced by new initializers; initializers no node reads and inferred shapes
    dropped."""
    graph = model.graph
    del graph.value_info[:]
    for node in graph.node:
        for index in range(len(node.input)):
            if (node.name, index) in new:
                name = f"{node.name}.input{index}"
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(new[node.name, index]), name))
                node.input[index] = name
    read = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result


def variants(kind: str) -> tuple[dict[str, onnx.ModelProto], dict[str, str]]:
    """fp32 and int8 models of every variant, and a note on each variant's cut."""
    calibration = ocr_data.calibration(kind)
    packaged = ocr_graph.with_input_size(onnx.load(ocr.model_path(kind)), ocr.SIZES[kind])
    dense = prepared(packaged, "int8-static", calibration)  # weights in initializers, where the cuts read them
    half, sets = halved(copy(dense))
    floats, notes = {"dense": dense, "half": half}, {"dense": "", "half": f"{sets} channel sets halved"}
    for groups in (2, 4):
        floats[f"grouped {groups}"], count = grouped(copy(dense), groups)
        notes[f"grouped {groups}"] = f"{count} 1x1 Convs grouped"
    models = {}
    for name, model in floats.items():
        models[name] = model
        models[f"{name} int8"] = quantize(model, "int8-static", calibration)
    return models, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["rec", "det"], choices=["rec", "det", "cls"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    for kind in args.models:
        models, notes = variants(kind)
        report = bench_models(models, args.batches, TIMING, clock="cpu")
        samples = {(r.model, r.batch): np.array(r.samples_ms) for r in report.results}
        rows = [("variant", "M MACs/image", *(f"b{b} {c}" for b in args.batches for c in
                                               ("fp32 x dense", "int8 x dense", "int8 x int8")), "cut")]
        for name in notes:
            macs = sum(ocr_graph.mac_split(models[name]).values()) / 1e6
            cells = []
            for b in args.batches:
                dense_ms, int8_ms = samples["dense", b], samples["dense int8", b]
                cells += [f"{np.median(dense_ms / samples[name, b]):.2f}x",
                          f"{np.median(dense_ms / samples[f'{name} int8', b]):.2f}x",
                          f"{np.median(int8_ms / samples[f'{name} int8', b]):.2f}x"]
            rows.append((name, f"{macs:.0f}", *cells, notes[name]))
        print(f"\n{kind} ({ocr.SIZES[kind][0]} x {ocr.SIZES[kind][1]}), one thread, CPU time, "
              f"{report.rounds} rounds\n{table(rows)}")


if __name__ == "__main__":
    main()
