"""The shard driver: a model's chain cut into one model per independent sub-network, written with their
manifest, and the shards merged proved against the model in ONNX Runtime.

Rule: each MatMul/Gemm's plan is the components of its support (``planning.support``: the nonzero pattern,
lossless, or what the statistical analysis confirms, lossy); ``distributed.shards.write_shards`` cuts and
writes (or refuses, with the reason); validation (``runtime.validation.compare``) runs the model, then the
shards in this process (``distributed.inference``, a session each, merged by the manifest), on the same inputs,
judged by the support's tolerance; a mismatch raises ``ValidationError`` carrying the report.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Optional, Union

import onnx

from onnx_decomp.config import SessionConfig, ValidationConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.model_stats import stats_at
from onnx_decomp.distributed.inference import ShardRunner
from onnx_decomp.distributed.shards import Manifest, write_shards
from onnx_decomp.errors import ValidationError
from onnx_decomp.io.model_io import ModelLike
from onnx_decomp.io.shapes import InputShapes
from onnx_decomp.planning.support import Support, as_plan, support_of
from onnx_decomp.report.shards import ShardReport, ShardSummary
from onnx_decomp.runtime.sessions import session_device
from onnx_decomp.runtime.validation import Runs, ValidationResult, compare


def _validate(ctx: ModelContext, manifest: Manifest, validation: ValidationConfig, support: Support,
              session: SessionConfig) -> ValidationResult:
    """The shards merged against the model (module rule)."""
    with ExitStack() as stack:
        def shards() -> tuple[Runs, str]:
            runner = stack.enter_context(ShardRunner(manifest, "local", session))
            return (lambda inputs, names: [runner(inputs[manifest.input])],
                    session_device(runner.sessions[0].session))
        return compare(ctx.proto, shards, ctx.specs, validation, support.tolerance(validation.tolerance), session,
                       ctx.base_dir)


def shard(model: ModelLike, folder: Union[str, os.PathLike], *, input_shapes: InputShapes = None,
          support: Union[str, Support] = "exact", session: Union[str, SessionConfig] = "auto",
          validation: Optional[ValidationConfig] = None, inline_functions: bool = False) -> ShardReport:
    """Write ``model``'s shards and manifest into ``folder`` and prove them (module rule; the folder is written
    before the proof, so a mismatch leaves it: the command line stages it). ``validation`` (default: 3 random
    input sets, the support's tolerance) with ``check=0`` and no inputs skips the proof; ``inline_functions``
    inlines model-local functions first."""
    support, session, validation = support_of(support), SessionConfig.of(session), validation or ValidationConfig()
    ctx = ModelContext.load(model, input_shapes, inline_functions)
    masks = support.masks(ctx) or {}
    plans = {op.site: as_plan(masks[op.site] if op.site in masks else op.matrix() != 0) for op in ctx.ops}
    manifest = write_shards(ctx, plans, folder)
    n_cols = next(spec.shape[-1] for spec in ctx.specs if spec.name == manifest.input)
    shards = [ShardSummary(entry.file, len(entry.cols), len(entry.rows),
                           stats_at(onnx.load(manifest.path(entry), load_external_data=False), ctx.specs,
                                    base_dir=manifest.folder))  # a shard reads the model's input
              for entry in manifest.shards]
    report = ShardReport(ctx.label, str(folder), support.name, n_cols, len(manifest.inverse),
                         stats_at(ctx.proto, ctx.specs, base_dir=ctx.base_dir), shards)
    if support.note:
        report.notes.append(support.note)
    if validation.check > 0 or validation.inputs is not None:
        report.validation = _validate(ctx, manifest, validation, support, session)
        if not report.validation.ok:
            raise ValidationError("the merged shards differ from the model in ONNX Runtime (see table)", report)
    else:
        report.notes.append("validation skipped (--check 0): the shards are unproven")
    return report
