"""Option groups shared by the subcommands, and their parsing into the configuration objects."""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from onnx_decomp.config import (EDGE_MODES, FDR_SCOPES, FORMS, GATES, METRICS, PROVIDERS, AnalysisConfig,
                                AnnealConfig, GateConfig, SessionConfig)
from onnx_decomp.errors import DecompError, ValidationError
from onnx_decomp.io.model_io import model_files


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name:1,128`` (also ``name:1x128`` or ``name:[1,128]``) -> ``("name", (1, 128))``."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.strip("[]").replace("x", ",").split(",") if d)
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 0:
        raise argparse.ArgumentTypeError(f"expected NAME:D1,D2,... got {text!r}")
    return name, shape


def _names(choices: tuple):
    """A parser of ``a,b`` lists of names from ``choices``."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n for n in text.split(",") if n)
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected names from {','.join(choices)}, got {text!r}")
        return names
    return parse


def file_path(text: str) -> Path:
    """An output file's path; one ending in a separator names a folder (``OUT/`` never writes a file OUT)."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} ends with '/': give a file path, not a folder")
    return Path(text)


def batch_sizes(text: str) -> tuple[int, ...]:
    """``1,64,256`` -> ``(1, 64, 256)``, every size at least 1."""
    try:
        sizes = tuple(int(n) for n in text.split(",") if n)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,64,256, got {text!r}")
    return sizes


def model_options() -> argparse.ArgumentParser:
    """The input model and the JSON report."""
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument("input", type=Path, help="ONNX model (external data is read from beside it)")
    group.add_argument("--json", type=file_path, metavar="PATH", help="also write the report as JSON")
    group.add_argument("--inline-functions", action="store_true",
                       help="inline model-local functions first, so that MatMul/Gemm inside them are seen")
    return group


def planning_options() -> argparse.ArgumentParser:
    """Input shapes, the cost gate and the ONNX Runtime provider."""
    defaults = GateConfig()
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument("--input-shape", type=_input_shape, action="append", default=[], metavar="NAME:D1,D2",
                       help="concrete shape for an input with symbolic dims (repeatable; default: symbolic "
                       "dims are 1)")
    group.add_argument("--gate", choices=GATES, default=defaults.kind,
                       help="time: rewrite a node only if ONNX Runtime runs it faster at the input shapes "
                       "(default); cost: if the cost model estimates it faster (deterministic, no timing); "
                       "flops: by multiply-accumulate count alone (deterministic)")
    group.add_argument("--min-flop-reduction", type=float, default=defaults.min_flop_reduction, metavar="X",
                       help="candidates need X times fewer multiply-accumulates than the dense weight "
                       "(default %(default)s)")
    group.add_argument("--min-speedup", type=float, default=defaults.min_speedup, metavar="X",
                       help="with --gate time, the measured speedup a rewrite needs (default %(default)s)")
    group.add_argument("--forms", type=_names(FORMS), default=defaults.forms, metavar="F1,F2",
                       help=f"rewrite forms to choose from, of {','.join(FORMS)} (default "
                       f"{','.join(defaults.forms)})")
    group.add_argument("--tune", action="store_true",
                       help="time every applicable form in ONNX Runtime and keep the fastest (default: the cost "
                       "model's estimate picks the form)")
    group.add_argument("--batch", type=batch_sizes, default=defaults.batches, metavar="B1,B2",
                       help="judge every node at these batch sizes (the first dim of inputs whose first dim is "
                       "symbolic); a rewrite must be faster at all of them")
    group.add_argument("--provider", choices=PROVIDERS, default=SessionConfig().provider,
                       help="ONNX Runtime provider for timing and validation (auto: CUDA if a session really "
                       "gets it, else CPU)")
    return group


def analysis_options() -> argparse.ArgumentParser:
    """The statistical criterion."""
    defaults = AnalysisConfig()
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument("--null", action="append", default=[], metavar="[GLOB=]SPEC",
                       help="null model for all weights or those matching GLOB, e.g. xavier-uniform or "
                       "'fc*=normal(sigma=0.02)' (repeatable; recorded metadata wins; default torch-linear)")
    group.add_argument("--fdr", type=float, default=defaults.fdr,
                       help="Benjamini-Hochberg level q (default %(default)s)")
    group.add_argument("--fdr-scope", choices=FDR_SCOPES, default=defaults.fdr_scope,
                       help="control the FDR per tensor (default) or over the whole model")
    group.add_argument("--init-reference", type=Path, metavar="PATH",
                       help="ONNX model with the initial tensors: test each update W - W0")
    return group


def anneal_options() -> argparse.ArgumentParser:
    """Structural annealing (``decompose --anneal``): calibration data, the fidelity metric, the structures."""
    defaults = AnnealConfig()
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument("--anneal", action="store_true",
                       help="cut the most structure whose fidelity on calibration data stays within --tolerance "
                       f"(default {defaults.tolerance}), refit the cuts, then rewrite exactly (lossy: see the report)")
    group.add_argument("--calib", type=Path, metavar="NPZ",
                       help="calibration inputs keyed by input name, samples along the first axis (without it: "
                       "random inputs, with a warning)")
    group.add_argument("--labels", type=Path, metavar="NPZ", help="labels keyed by output name (--metric accuracy)")
    group.add_argument("--metric", choices=METRICS, default=defaults.metric,
                       help="fidelity against the original: rel-l2 per output (default), max-abs, top1 "
                       "(argmax disagreement), accuracy (drop against --labels)")
    group.add_argument("--blocks", type=int, metavar="K", help="try K blocks only (and report what they cost)")
    group.add_argument("--no-refit", action="store_true", help="plain cuts: no ridge refit of the cut weights")
    group.add_argument("--unbalanced", action="store_true", help="blocks of any size (default: balanced)")
    group.add_argument("--held-out", type=float, default=defaults.held_out, metavar="F",
                       help="fraction of the calibration samples held out for the reported fidelity "
                       "(default %(default)s)")
    group.add_argument("--bootstrap", type=int, default=defaults.bootstrap, metavar="N",
                       help="bootstrap resamples for the stability of accepted partitions (default %(default)s)")
    group.add_argument("--square", action="append", default=[], metavar="NODE",
                       help="plan NODE in the directed view too (its input and output share one index space; "
                       "residual maps are found without it; repeatable)")
    group.add_argument("--report", type=Path, metavar="DIR", help="write DIR/anneal.json and DIR/anneal.png")
    return group


def anneal_config(args: argparse.Namespace) -> AnnealConfig:
    tolerance = AnnealConfig.tolerance if args.tolerance is None else args.tolerance
    return AnnealConfig(args.metric, tolerance, not args.no_refit, args.blocks, not args.unbalanced, args.held_out,
                        bootstrap=args.bootstrap, square=tuple(args.square), seed=args.seed)


def input_shapes(args: argparse.Namespace) -> dict:
    return dict(args.input_shape)


def gate_config(args: argparse.Namespace) -> GateConfig:
    return GateConfig(args.gate, args.min_flop_reduction, args.min_speedup, args.forms, args.tune, args.batch)


def session_config(args: argparse.Namespace) -> SessionConfig:
    return SessionConfig(args.provider)


def analysis_config(args: argparse.Namespace, edges: Optional[str] = None) -> AnalysisConfig:
    return AnalysisConfig(tuple(args.null), args.fdr, args.fdr_scope, args.init_reference,
                          edges or EDGE_MODES[0])


@contextmanager
def report_on_failure() -> Iterator[None]:
    """A validation mismatch prints its report's tables before the one-line error."""
    try:
        yield
    except ValidationError as error:
        if error.report is not None:
            print(error.report.format())
        raise


def model_reads(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The files a run reads besides its data: the input model, an init reference, and their external data."""
    reads = model_files(args.input)
    if getattr(args, "init_reference", None) is not None:
        reads += model_files(args.init_reference, "the --init-reference model")
    return reads
