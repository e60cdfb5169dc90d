"""Annealing block by block in bounded memory (``anneal --by-block``), as GPTQ and SparseGPT go layer by layer.

Rules:
- Blocks: ``search.blocks`` (the graph cut at tensors through which passes all that later layers take from
  earlier weights). The input is read as its weight-free skeleton; each block is written to a temporary
  folder as a model of its own, its weights copied from the input tensor by tensor, and annealed from there
  as any model file is (weights read when used): one block's weights are in memory at a time.
- Data: the calibration data is split once (``search.calibration``). Two streams of every part (the tuning
  folds, the held-out samples) are kept at the current cut: the original model's tensors and the
  already-compressed model's. Block ``b`` is annealed by the ``drivers.anneal`` stages on the compressed
  stream, its reference outputs and refit targets taken from the original stream (``FidelityGate``'s
  ``original``): its gate measures all the error at its output, its own and what reached it, against the
  original model. Then the streams move on: the original block's outputs on the original stream (the gate's
  reference), the rewritten block's outputs on the compressed stream.
- Budget (our rule): a cumulative ramp, so that what each block adds sums to the whole. Independent errors
  add in quadrature in rel-l2 (and linearly in the cosine distance, a squared error): block ``b`` of ``n``
  may reach ``sqrt((b + 1) / n)`` (cosine: ``(b + 1) / n``) of the stream budget at its output, each block
  adding about an equal share, and what one leaves unspent the next may use (an error that grows through
  later blocks is measured where it arrives). The last block holds the model's outputs and is measured with
  the run's metric against the whole ``tolerance``: its fidelity is the compressed model's end to end, the
  figure reported against the whole budget. Between blocks the metric is the run's where it reads any tensor
  (rel-l2, cosine; the stream budget is then ``tolerance``), else rel-l2 with its own budget
  ``stream_tolerance``, required then.
- Memory: once a block is done, its objects are collected and the C library's freed memory handed back to
  the system (glibc's ``malloc_trim``, where there is one), so that one block's peak does not stack on the
  last one's leftovers; within a block, annealing lets its search state go before it rewrites
  (``drivers.anneal``), and the masked, refitted block's weights are written to the temporary folder one at
  a time as they are made (``Network.model_with``) and read from there by the rewrite and by ONNX Runtime
  (which maps external data) instead of staying in memory as a proto beside them (one layer of the 1.1B
  model: 633 -> 586 MiB above the imports; written whole and saved, the proto held them twice: protobuf's
  arena keeps a tensor's cleared bytes until the proto goes). Arrays of 1 MiB or
  more get mappings of their own (glibc's ``mallopt``, for the process, our decision: bounded memory is
  what ``--by-block`` is for), so that what a block frees goes back to the system at once: glibc's default
  raises its threshold up to 32 MiB as large arrays are freed, and the block's arrays below that size then
  stay in its heap, fragmented (one layer of the 1.1B model: 1077 MiB above the imports by default, 834 MiB
  so; about 10% more time). ``MALLOC_MMAP_THRESHOLD_`` in the environment overrides it. ONNX Runtime's
  sessions run without their CPU arena, which would keep the memory of a session's largest run for its life
  (one layer: 669 -> 650 and 632 MiB in two runs, about 3% more time).
- Output: each rewritten block goes to the temporary folder when it is done; the model is stitched from them
  (nodes in block order, side nodes once, the input's interface) and written with its weights copied tensor
  by tensor: the compressed model is never in memory whole. Quantization is refused here.
- Work folder: the temporary folder is made in the system's temporary folder, or in ``work_folder`` where
  given: a disk with room for a copy of the model's weights (a temporary folder in memory, tmpfs, would hold
  them in memory), or storage every node of a Ray cluster reads at the same path, which ``--ray-address``
  needs (its fold workers read each block's file by path).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import gc
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
from onnx import helper
from threadpoolctl import threadpool_limits

from onnx_decomp.config import AnalysisConfig, AnnealConfig, ClusterConfig, GateConfig, SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.distributed.cluster import Cluster, ray_cluster
from onnx_decomp.distributed.folds import fold_annealer
from onnx_decomp.drivers.anneal import finalize, rewrite, search, verify
from onnx_decomp.drivers.decompose import Gate, Session
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.io.graph import export_graph
from onnx_decomp.io.model_io import ModelLike, check_model, save_model
from onnx_decomp.io.references import inside
from onnx_decomp.io.shapes import InputShapes, symbolic_types
from onnx_decomp.report.by_block import BlockSummary, ByBlockReport
from onnx_decomp.search.blocks import Block, block_model, find_blocks
from onnx_decomp.search.calibration import Arrays, Calibration, Samples, calibration
from onnx_decomp.search.schedule import Annealer
from onnx_decomp.stats.null_models import REFERENCE_KEY

logger = logging.getLogger(__name__)

PARTS = ("tuning", "held-out")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # bytes (module rule)
ANY_TENSOR = ("rel-l2", "cosine")  # metrics that read any tensor, not only outputs


def _data(data: Calibration, arrays: dict[str, dict], names: list[str], last: bool) -> Calibration:
    """The block's calibration data: ``names`` out of one stream, split as ``data`` (views, no copies)."""
    n0 = len(data.folds[0])
    tuning = Samples({n: arrays["tuning"][n] for n in names}, data.tuning.labels if last else {})
    held = Samples({n: arrays["held-out"][n] for n in names}, data.held_out.labels if last else {})
    folds = (Samples({n: a[:n0] for n, a in tuning.inputs.items()}, {n: a[:n0] for n, a in tuning.labels.items()}),
             Samples({n: a[n0:] for n, a in tuning.inputs.items()}, {n: a[n0:] for n, a in tuning.labels.items()}))
    return Calibration(tuning, held, folds, data.batch, data.source, data.validation)


def _budget(config: AnnealConfig, stream_tolerance: Optional[float]) -> tuple[str, float]:
    """The metric and budget between blocks (module rule)."""
    if config.metric in ANY_TENSOR:
        return config.metric, config.tolerance if stream_tolerance is None else stream_tolerance
    if stream_tolerance is None:
        raise UnsupportedConstructError(f"--by-block with --metric {config.metric} needs --stream-tolerance (the "
                                        "rel-l2 budget between blocks)")
    return "rel-l2", stream_tolerance


class _Run:
    """One block-by-block run: the skeleton, its blocks, the streams and the temporary folder."""

    def __init__(self, ctx: ModelContext, data: Calibration, work: Path, settings: dict):
        self.ctx, self.data, self.work, self.settings = ctx, data, work, settings
        self.skeleton = export_graph(ctx.graph, like=ctx.proto)  # weights stay references
        layers = {op.node.name for op in ctx.ops if op.graph is ctx.graph and len(op.weight.outputs) == 1}
        self.blocks = find_blocks(self.skeleton.graph, layers)
        self.types = symbolic_types(self.skeleton)
        inputs = {"tuning": data.tuning.inputs, "held-out": data.held_out.inputs}
        self.streams = {"original": dict(inputs), "compressed": dict(inputs)}
        self.parts: list[Path] = []

    def block(self, block: Block, config: AnnealConfig, cluster: Optional[Cluster]):
        """Anneal one block (module rules); returns its finished ``Annealing`` and its weights' bytes."""
        path = self.work / f"block{block.index}.onnx"
        sub = block_model(self.skeleton, block, self.types)
        size = sum(int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                   for t in sub.graph.initializer)
        save_model(sub, path, external_data=True, base_dir=self.ctx.base_dir)
        del sub
        shapes = {name: self.ctx.shapes[name] for name in block.inputs if name in self.ctx.shapes}
        ctx = ModelContext.load(path, shapes)
        last = block.index == len(self.blocks) - 1
        data, original = (_data(self.data, self.streams[s], block.inputs, last) for s in ("compressed", "original"))
        s = self.settings
        make = Annealer if cluster is None else fold_annealer(cluster, ctx, shapes, False, s["session"], config, data,
                                                              original)
        run = search(ctx, data, config, s["analysis"], s["session"], original, make)
        masked = self.work / f"masked{block.index}.onnx"
        finalize(run, masked.with_name(masked.name + ".data"))  # its weights written there, one at a time
        masked.write_bytes(run.report.masked.SerializeToString())
        run.report.masked = masked  # rewrite and verify read it from there (module rule)
        rewrite(run, shapes, s["gate"], s["session"])
        verify(run, s["session"])
        run.report.masked = None
        if not last:
            keep = set().union(*(set(b.inputs) for b in self.blocks[block.index + 1:]))
            for part in PARTS:
                new = dict(zip(block.outputs, run.fidelity.outputs_of(run.model, s["session"], part)))
                self.streams["compressed"][part] = {n: a for n, a in {**self.streams["compressed"][part], **new}.items()
                                                     if n in keep}
                ahead = dict(zip(block.outputs, run.fidelity.reference[part]))
                self.streams["original"][part] = {n: a for n, a in {**self.streams["original"][part], **ahead}.items()
                                                   if n in keep}
        self.parts.append(self.work / f"rewritten{block.index}.onnx")
        save_model(run.model, self.parts[-1], external_data=True)
        for done in (path, masked):
            done.unlink()
            done.with_name(done.name + ".data").unlink(missing_ok=True)
        return run, size

    def stitched(self) -> onnx.ModelProto:
        """The rewritten blocks as one model (module rule); its weights are references into the work folder."""
        nodes, initializers, produced, opsets = [], {}, set(), {}
        for path in self.parts:
            part = onnx.load(str(path), load_external_data=False)
            for node in part.graph.node:
                if not all(name in produced for name in node.output if name):
                    nodes.append(node)
                    produced.update(node.output)
            for tensor in part.graph.initializer:
                initializers.setdefault(tensor.name, tensor)
            for opset in part.opset_import:
                opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        graph = self.skeleton.graph
        model = helper.make_model(helper.make_graph(nodes, graph.name, graph.input, graph.output,
                                                    list(initializers.values())),
                                  opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                                  ir_version=self.skeleton.ir_version)
        for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
            setattr(model, name, getattr(self.skeleton, name))
        model.metadata_props.extend(self.skeleton.metadata_props)
        model.functions.extend(self.skeleton.functions)
        return model


def _with_reference(analysis: AnalysisConfig, ctx: ModelContext) -> AnalysisConfig:
    """The analysis settings with the init reference the model's metadata names resolved beside the model
    (the block files lie elsewhere)."""
    metadata = {p.key: p.value for p in ctx.proto.metadata_props}
    if analysis.init_reference is not None or REFERENCE_KEY not in metadata or ctx.source is None:
        return analysis
    path = inside(ctx.source.parent, metadata[REFERENCE_KEY], f"metadata {REFERENCE_KEY}")
    return dataclasses.replace(analysis, init_reference=path)


@functools.cache
def _libc_function(name: str):
    """The C library's function ``name`` (glibc's ``malloc_trim``, ``mallopt``), or None; the library is looked
    up once (``find_library`` runs ldconfig)."""
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), name, None) if library else None


def release_memory() -> None:
    """Collect garbage and hand the C library's free memory back to the system (module rule)."""
    gc.collect()
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def map_large_allocations() -> None:
    """glibc: serve every allocation of ``MMAP_THRESHOLD`` bytes or more by a mapping of its own, unmapped when
    it is freed (module rule), unless the environment sets ``MALLOC_MMAP_THRESHOLD_``."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: Linux's ``VmHWM`` (its own memory image's; ``ru_maxrss``
    keeps the peak of the image it replaced at exec: a child of a large process starts at its parent's),
    else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def anneal_by_block(model: ModelLike, output: Union[str, os.PathLike], calib: Optional[Arrays] = None, *,
                    labels: Optional[Arrays] = None, inputs: Optional[Arrays] = None, metric: Optional[str] = None,
                    tolerance: Optional[float] = None, config: Optional[AnnealConfig] = None, analysis: Optional[AnalysisConfig] = None,
                    input_shapes: InputShapes = None, gate: Gate = "time", session: Session = "auto",
                    stream_tolerance: Optional[float] = None, inline_functions: bool = False,
                    cluster: Union[None, ClusterConfig, Cluster] = None,
                    work_folder: Optional[Union[str, os.PathLike]] = None) -> ByBlockReport:
    """Anneal ``model`` block by block (module rules) and write the rewritten model to ``output`` (with its
    weights in ``output.data``); returns the report. Arguments as for ``drivers.anneal.anneal`` (``metric``,
    ``tolerance`` override ``config``); ``stream_tolerance``: the budget between blocks, ``work_folder``:
    where the temporary folder is made (module rules)."""
    config = config or AnnealConfig()
    overrides = {k: v for k, v in dict(metric=metric, tolerance=tolerance).items() if v is not None}
    config = dataclasses.replace(config, **overrides) if overrides else config
    if config.quantize is not None:
        raise UnsupportedConstructError("--by-block does not quantize: quantize the written model afterwards")
    if isinstance(cluster, ClusterConfig) and cluster.address is not None and work_folder is None:
        raise UnsupportedConstructError("--by-block on a Ray cluster (--ray-address) needs --work-folder DIR on "
                                        "storage its nodes read at the same path: the workers read each block's file")
    if work_folder is not None and not Path(work_folder).is_dir():
        raise UnsupportedConstructError(f"--work-folder {work_folder}: not a folder")
    stream_metric, stream_budget = _budget(config, stream_tolerance)
    map_large_allocations()
    settings = {"analysis": analysis or AnalysisConfig(), "gate": GateConfig.of(gate),
                "session": dataclasses.replace(SessionConfig.of(session), arena=False)}
    with threadpool_limits(config.blas_threads, user_api="blas"), ray_cluster(cluster) as ray, \
            tempfile.TemporaryDirectory(prefix="onnx-decomp-blocks-", dir=work_folder) as work:
        ctx = ModelContext.load(model, input_shapes, inline_functions)
        settings["analysis"] = _with_reference(settings["analysis"], ctx)
        data = calibration(ctx, config, calib, labels, inputs)
        run = _Run(ctx, data, Path(work), settings)
        report = ByBlockReport(ctx.label, config.metric, config.tolerance, stream_metric, stream_budget,
                               {"source": data.source, "tuning": len(data.tuning), "validation": len(data.held_out),
                                "validation_set": data.validation}, warnings=list(data.warnings),
                               notes=list(ctx.notes) + list(data.notes))
        count, totals = len(run.blocks), [0, 0]
        for block in run.blocks:
            last = block.index == count - 1
            share = (block.index + 1) / count
            budget = config.tolerance if last else stream_budget * (share if stream_metric == "cosine" else share ** 0.5)
            block_config = dataclasses.replace(config, metric=config.metric if last else stream_metric,
                                               tolerance=budget, outputs=config.outputs if last else None)
            start = time.perf_counter()
            done, size = run.block(block, block_config, ray)
            final = done.report.final
            report.blocks.append(BlockSummary(
                block.index, block.layers, block.inputs, block.outputs, size, block_config.metric, budget,
                final.tuning, final.validation, final.dense_macs, final.macs,
                [f"{s.candidate.unit} {s.candidate.structure}" for s in done.report.accepted],
                time.perf_counter() - start, peak_rss()))
            report.plans.update(done.report.plans)
            report.warnings += [f"block {block.index}: {w}" for w in done.report.warnings if w not in data.warnings]
            totals = [totals[0] + final.dense_macs, totals[1] + final.macs]
            logger.info("block %d/%d: %s %.4g (budget %.4g), %.1f s", block.index + 1, count, block_config.metric,
                        final.validation, budget, report.blocks[-1].seconds)
            if last:
                report.final = {"tuning": final.tuning, "validation": final.validation,
                                "validation_refit": final.validation_refit, "validation_plain": final.validation_plain,
                                "dense_macs": totals[0], "macs": totals[1],
                                "mac_reduction": totals[0] / max(totals[1], 1),
                                "within_budget": bool(final.validation <= config.tolerance)}
            del done
            release_memory()
        stitched = run.stitched()
        check_model(stitched)
        save_model(stitched, output, external_data=True, base_dir=Path(work))
    return report
