"""Option groups shared by the subcommands, each declaring its options and parsing them into its configuration
object in one place (after Polygraphy's argument groups). Defaults are read from the configuration objects,
never restated; a subcommand lists the groups it takes, so an option that does not apply is refused by the
parser, not ignored."""

from __future__ import annotations

import abc
import argparse
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from onnx_decomp.config import (EDGE_MODES, FDR_SCOPES, FORMS, GATES, METRICS, PROVIDERS, AnalysisConfig,
                                AnnealConfig, BlockSettings, ClusterConfig, GateConfig, SessionConfig, SquareSettings,
                                Tolerance, ValidationConfig)
from onnx_decomp.errors import ValidationError
from onnx_decomp.io.arrays import load_arrays
from onnx_decomp.io.model_io import model_files
from onnx_decomp.planning.support import DEFAULT_LOSSY_TOLERANCE, SUPPORTS, Support, support_of
from onnx_decomp.runtime.quantize import SCHEMES
from onnx_decomp.search.families import FAMILIES


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


def names(choices: tuple):
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


class Options(abc.ABC):
    """A group of options: ``add`` declares them, ``parse`` makes the configuration they describe."""

    @abc.abstractmethod
    def add(self, parser: argparse.ArgumentParser) -> None:
        """Declare the group's options on ``parser``."""

    def parse(self, args: argparse.Namespace):
        """The group's configuration object from the parsed ``args`` (None when the options are read directly)."""


class ModelOptions(Options):
    """The input model (and, for a rewriting command, the output model), the JSON report, function inlining."""

    def __init__(self, output: bool = False):
        self.output = output

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("input", type=Path, help="ONNX model (external data is read from beside it)")
        if self.output:
            parser.add_argument("output", type=file_path, help="where to write the rewritten model")
        parser.add_argument("--json", type=file_path, metavar="PATH", help="also write the report as JSON")
        parser.add_argument("--inline-functions", action="store_true",
                            help="inline model-local functions first, so that MatMul/Gemm inside them are seen")


class WriteOptions(Options):
    """How a rewritten model is written."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--require-change", action="store_true",
                            help="exit 3 without writing when nothing is rewritten")
        parser.add_argument("--save-as-external-data", action="store_true",
                            help="write weights to OUTPUT.data (automatic above 2 GiB)")


class ShapeOptions(Options):
    """Concrete shapes for inputs with symbolic dims."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input-shape", type=_input_shape, action="append", default=[], metavar="NAME:D1,D2",
                            help="concrete shape for an input with symbolic dims (repeatable; default: symbolic "
                            "dims are 1)")

    def parse(self, args: argparse.Namespace) -> dict:
        return dict(args.input_shape)


class GateOptions(Options):
    """The cost gate: which candidates are rewritten, and in which form."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        defaults = GateConfig()
        parser.add_argument("--gate", choices=GATES, default=defaults.kind,
                            help="time: rewrite a node only if ONNX Runtime runs it faster at the input shapes "
                            "(default); cost: if the cost model estimates it faster (deterministic, no timing); "
                            "flops: by multiply-accumulate count alone (deterministic)")
        parser.add_argument("--min-flop-reduction", type=float, default=defaults.min_flop_reduction, metavar="X",
                            help="candidates need X times fewer multiply-accumulates than the dense weight "
                            "(default %(default)s)")
        parser.add_argument("--min-speedup", type=float, default=defaults.min_speedup, metavar="X",
                            help="with --gate time, the measured speedup a rewrite needs (default %(default)s)")
        parser.add_argument("--forms", type=names(FORMS), default=defaults.forms, metavar="F1,F2",
                            help=f"rewrite forms to choose from, of {','.join(FORMS)} (default "
                            f"{','.join(defaults.forms)})")
        parser.add_argument("--tune", action="store_true",
                            help="time every applicable form in ONNX Runtime and keep the fastest (default: the "
                            "cost model's estimate picks the form)")
        parser.add_argument("--batch", type=batch_sizes, default=defaults.batches, metavar="B1,B2",
                            help="judge every node at these batch sizes (the first dim of inputs whose first dim "
                            "is symbolic); a rewrite must be faster at all of them")

    def parse(self, args: argparse.Namespace) -> GateConfig:
        return GateConfig(args.gate, args.min_flop_reduction, args.min_speedup, args.forms, args.tune, args.batch)


class SessionOptions(Options):
    """Where ONNX Runtime runs."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--provider", choices=PROVIDERS, default=SessionConfig().provider,
                            help="ONNX Runtime provider for timing and validation (auto: CUDA if a session "
                            "really gets it, else CPU)")

    def parse(self, args: argparse.Namespace) -> SessionConfig:
        return SessionConfig(args.provider)


class AnalysisOptions(Options):
    """The statistical criterion (``--edges`` with ``edges``)."""

    def __init__(self, edges: bool = False):
        self.edges = edges

    def add(self, parser: argparse.ArgumentParser) -> None:
        defaults = AnalysisConfig()
        parser.add_argument("--null", action="append", default=[], metavar="[GLOB=]SPEC",
                            help="null model for all weights or those matching GLOB, e.g. xavier-uniform or "
                            "'fc*=normal(sigma=0.02)' (repeatable; recorded metadata wins; default torch-linear)")
        parser.add_argument("--fdr", type=float, default=defaults.fdr,
                            help="Benjamini-Hochberg level q (default %(default)s)")
        parser.add_argument("--fdr-scope", choices=FDR_SCOPES, default=defaults.fdr_scope,
                            help="control the FDR per tensor (default) or over the whole model")
        parser.add_argument("--init-reference", type=Path, metavar="PATH",
                            help="ONNX model with the initial tensors: test each update W - W0")
        if self.edges:
            parser.add_argument("--edges", choices=EDGE_MODES, default=defaults.edges,
                                help="grouped: also decide the multi-channel edges of layer chains (Fisher)")

    def parse(self, args: argparse.Namespace) -> AnalysisConfig:
        return AnalysisConfig(tuple(args.null), args.fdr, args.fdr_scope, args.init_reference,
                              args.edges if self.edges else AnalysisConfig.edges)


class SupportOptions(Options):
    """Which weights a plan keeps (``planning.support``), with the statistical criterion (``AnalysisOptions``)
    for ``--support confirmed``."""

    def __init__(self):
        self.analysis = AnalysisOptions()

    def add(self, parser: argparse.ArgumentParser) -> None:
        self.analysis.add(parser)
        parser.add_argument("--support", choices=SUPPORTS, default=SUPPORTS[0],
                            help="exact: the nonzero pattern (lossless, default); confirmed: the entries the "
                            "statistical analysis confirms, dropping the rest (lossy; see --null, --fdr)")

    def parse(self, args: argparse.Namespace) -> Support:
        return support_of(args.support, self.analysis.parse(args))


class ValidationOptions(Options):
    """How ``decompose`` proves its rewrite against the original."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        defaults, exact = ValidationConfig(), Tolerance()
        parser.add_argument("--check", type=int, default=defaults.check, metavar="N",
                            help="compare outputs on N random input sets in ONNX Runtime (default %(default)s; "
                            "0 skips)")
        parser.add_argument("--rtol", type=float, default=exact.rtol,
                            help="exact support: relative tolerance per element (default %(default)g)")
        parser.add_argument("--atol", type=float, default=exact.atol,
                            help="exact support: absolute tolerance per element (default %(default)g)")
        parser.add_argument("--tolerance", type=float, metavar="X",
                            help="compare outputs by relative L2 error <= X instead of per element (default "
                            f"{DEFAULT_LOSSY_TOLERANCE} with --support confirmed)")
        parser.add_argument("--inputs", type=Path, metavar="NPZ",
                            help="validate on these input arrays (keyed by input name) instead of random ones")
        parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random inputs")

    def parse(self, args: argparse.Namespace) -> ValidationConfig:
        return ValidationConfig(args.check, args.seed, Tolerance(args.rtol, args.atol, args.tolerance),
                                None if args.inputs is None else load_arrays(args.inputs))


class AnnealOptions(Options):
    """Structural annealing: calibration data, the fidelity budget, the structures, the report."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        defaults = AnnealConfig()
        parser.add_argument("--calib", type=Path, metavar="NPZ",
                            help="calibration inputs keyed by input name, samples along the first axis (without "
                            "it: random inputs, with a warning)")
        parser.add_argument("--labels", type=Path, metavar="NPZ",
                            help="labels keyed by output name (--metric accuracy)")
        parser.add_argument("--inputs", type=Path, metavar="NPZ",
                            help="the validation set (keyed by input name; labels under output names) instead "
                            "of held-out calibration samples")
        parser.add_argument("--metric", choices=METRICS, default=defaults.metric,
                            help="fidelity against the original: rel-l2 per output (default), max-abs, top1 "
                            "(argmax disagreement), accuracy (drop against --labels), cosine (1 - mean cosine "
                            "similarity of output rows, for embeddings)")
        parser.add_argument("--output", action="append", dest="outputs", metavar="NAME",
                            help="measure fidelity on this output (repeatable; default: every float output)")
        parser.add_argument("--tolerance", type=float, default=defaults.tolerance, metavar="X",
                            help="the fidelity budget on --metric (default %(default)s)")
        parser.add_argument("--search-samples", type=int, default=defaults.search_samples, metavar="N",
                            help="the most tuning samples per fold the search runs a candidate on (default "
                            "%(default)s; 0: all); the reported fidelity uses every held-out sample")
        parser.add_argument("--held-out", type=float, default=defaults.held_out, metavar="F",
                            help="fraction of the calibration samples held out for the reported fidelity "
                            "(default %(default)s)")
        parser.add_argument("--quantize", choices=SCHEMES, metavar="SCHEME",
                            help=f"quantize last, inside the budget: one of {','.join(SCHEMES)} (what it costs alone "
                            "on the tuning samples is taken off --tolerance before the structure is searched)")
        parser.add_argument("--families", type=names(tuple(FAMILIES)), metavar="F1,F2",
                            help=f"structure families to search, of {','.join(FAMILIES)} (default: all)")
        parser.add_argument("--blocks", type=int, metavar="K", help="try K blocks only (and report what they cost)")
        parser.add_argument("--no-refit", action="store_true", help="plain cuts: no ridge refit of the cut weights")
        parser.add_argument("--unbalanced", action="store_true", help="blocks of any size (default: balanced)")
        parser.add_argument("--bootstrap", type=int, default=defaults.bootstrap, metavar="N",
                            help="bootstrap resamples for the stability of accepted partitions (default "
                            "%(default)s)")
        parser.add_argument("--square", action="append", default=[], metavar="NODE",
                            help="plan NODE in the directed view too (its input and output share one index "
                            "space; residual maps are found without it; repeatable)")
        parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of splits, folds and clustering")
        parser.add_argument("--report", type=Path, metavar="DIR", help="write DIR/anneal.json and DIR/anneal.png")

    def parse(self, args: argparse.Namespace) -> AnnealConfig:
        return AnnealConfig(args.metric, args.tolerance, not args.no_refit, args.held_out, bootstrap=args.bootstrap,
                            search_samples=args.search_samples or None,
                            seed=args.seed, outputs=args.outputs, quantize=args.quantize, families=args.families,
                            block=BlockSettings(args.blocks, not args.unbalanced),
                            square=SquareSettings(tuple(args.square)))


class ClusterOptions(Options):
    """Annealing on Ray workers (extra ``ray``), and block by block."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--by-block", action="store_true",
                            help="anneal one block of layers at a time in bounded memory (blocks: the graph cut "
                            "where one tensor separates groups of layers; see the README)")
        parser.add_argument("--stream-tolerance", type=float, metavar="X",
                            help="with --by-block and a --metric other than rel-l2 or cosine: the rel-l2 budget "
                            "at the last cut before the outputs")
        parser.add_argument("--work-folder", type=Path, metavar="DIR",
                            help="with --by-block: make its temporary folder (a copy of the weights) in DIR, not "
                            "the system's; with --ray-address, DIR must be read by every node at the same path")
        parser.add_argument("--workers", type=int, metavar="N",
                            help="run the search's tuning folds on N Ray workers of a local Ray instance started "
                            "for the run (loopback only; the same result; extra ray)")
        parser.add_argument("--ray-address", metavar="ADDR",
                            help="run them on the Ray cluster at ADDR instead (model and data paths must be "
                            "readable on its nodes)")

    def parse(self, args: argparse.Namespace) -> Optional[ClusterConfig]:
        if args.workers is None and args.ray_address is None:
            return None
        return ClusterConfig(args.workers, args.ray_address)


def add_all(parser: argparse.ArgumentParser, groups: list[Options]) -> argparse.ArgumentParser:
    for group in groups:
        group.add(parser)
    return parser


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
