"""Command line: ``onnx-decomp inspect IN`` and ``onnx-decomp decompose IN OUT``.

Exit codes: 0 success; 1 the rewritten model failed validation; 2 bad input or usage;
3 ``--require-change`` and nothing was rewritten. On any failure nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from onnx_decomp.decompose import (DEFAULT_LOSSY_TOLERANCE, DEFAULT_MIN_FLOP_REDUCTION, GATES, SUPPORTS,
                                   decompose, inspect)
from onnx_decomp.analyze import EDGE_MODES, FDR_SCOPES, analyze
from onnx_decomp.errors import DecompError
from onnx_decomp.model_io import save_model
from onnx_decomp.runtime import PROVIDERS, Tolerance
from onnx_decomp.timing import DEFAULT_MIN_SPEEDUP

EXIT_NO_CHANGE = 3


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-decomp", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logs")
    commands = parser.add_subparsers(dest="command", required=True)

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("input", type=Path, help="ONNX model (external data is read from beside it)")
    model.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")

    common = argparse.ArgumentParser(add_help=False, parents=[model])
    common.add_argument("--input-shape", type=_input_shape, action="append", default=[],
                        metavar="NAME:D1,D2", help="concrete shape for an input with symbolic dims "
                        "(repeatable; default: symbolic dims are 1)")
    common.add_argument("--gate", choices=GATES, default="time",
                        help="time: rewrite a node only if ONNX Runtime runs it faster at the input shapes "
                        "(default); flops: by multiply-accumulate count alone (deterministic)")
    common.add_argument("--min-flop-reduction", type=float, default=DEFAULT_MIN_FLOP_REDUCTION,
                        metavar="X", help="candidates need X times fewer multiply-accumulates than the "
                        "dense weight (default %(default)s)")
    common.add_argument("--min-speedup", type=float, default=DEFAULT_MIN_SPEEDUP, metavar="X",
                        help="with --gate time, the measured speedup a rewrite needs (default %(default)s)")
    common.add_argument("--provider", choices=PROVIDERS, default="auto",
                        help="ONNX Runtime provider for timing and validation (auto: CUDA if a session "
                        "really gets it, else CPU)")

    commands.add_parser("inspect", parents=[common], help="list MatMul/Gemm weights and their blocks")
    stats = argparse.ArgumentParser(add_help=False)
    stats.add_argument("--null", action="append", default=[], metavar="[GLOB=]SPEC",
                       help="null model for all weights or those matching GLOB, e.g. xavier-uniform or "
                       "'fc*=normal(sigma=0.02)' (repeatable; recorded metadata wins; default torch-linear)")
    stats.add_argument("--fdr", type=float, default=0.05, help="Benjamini-Hochberg level q (default 0.05)")
    stats.add_argument("--fdr-scope", choices=FDR_SCOPES, default="tensor",
                       help="control the FDR per tensor (default) or over the whole model")
    stats.add_argument("--init-reference", type=Path, metavar="PATH",
                       help="ONNX model with the initial tensors: test each update W - W0")

    study = commands.add_parser("analyze", parents=[model, stats],
                                help="test every weight entry against its initialization (null) distribution")
    study.add_argument("--report", type=Path, metavar="DIR",
                       help="write DIR/report.json and DIR/figures/*.png (histograms, permuted supports)")
    study.add_argument("--edges", choices=EDGE_MODES, default="entries",
                       help="grouped: also decide the multi-channel edges of layer chains (Fisher)")
    study.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    run = commands.add_parser("decompose", parents=[common, stats],
                              help="rewrite block-structured MatMul/Gemm into branches and validate")
    run.add_argument("output", type=Path, help="where to write the rewritten model")
    run.add_argument("--check", type=int, default=3, metavar="N",
                     help="compare outputs on N random input sets in ONNX Runtime (default 3; 0 skips)")
    run.add_argument("--rtol", type=float, default=Tolerance.rtol,
                     help="exact support: relative tolerance per element (default %(default)g)")
    run.add_argument("--atol", type=float, default=Tolerance.atol,
                     help="exact support: absolute tolerance per element (default %(default)g)")
    run.add_argument("--support", choices=SUPPORTS, default="exact",
                     help="exact: the nonzero pattern (lossless, default); confirmed: the entries the "
                     "statistical analysis confirms, dropping the rest (lossy; see --null, --fdr)")
    run.add_argument("--tolerance", type=float, metavar="X",
                     help="compare outputs by relative L2 error <= X instead of per element (default "
                     f"{DEFAULT_LOSSY_TOLERANCE} with --support confirmed)")
    run.add_argument("--inputs", type=Path, metavar="NPZ",
                     help="validate on these input arrays (keyed by input name) instead of random ones")
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    run.add_argument("--require-change", action="store_true",
                     help=f"exit {EXIT_NO_CHANGE} without writing when nothing is rewritten")
    run.add_argument("--save-as-external-data", action="store_true",
                     help="write weights to OUTPUT.data (automatic above 2 GiB)")
    return parser


def _load_inputs(path: Optional[Path]):
    """Arrays keyed by input name from an .npz file, or None."""
    if path is None:
        return None
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise DecompError(f"{path}: cannot read input arrays ({error})") from None


def _analyze(args: argparse.Namespace):
    """Run the analysis; a report folder this call created is removed again if the analysis fails."""
    created = args.report is not None and not args.report.exists()
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
    try:
        report = analyze(args.input, nulls=args.null, fdr=args.fdr, fdr_scope=args.fdr_scope,
                         init_reference=args.init_reference, edges=args.edges, report_dir=args.report,
                         figures=not args.no_figures)
    except DecompError:
        if created:
            shutil.rmtree(args.report, ignore_errors=True)
        raise
    if args.report is not None:
        report.write_json(args.report / "report.json")
    return report


def _run(args: argparse.Namespace) -> int:
    if args.command == "analyze":
        report = _analyze(args)
        print(report.format())
        if args.json:
            report.write_json(args.json)
        return 0
    options = dict(input_shapes=dict(args.input_shape), gate=args.gate, provider=args.provider,
                   min_flop_reduction=args.min_flop_reduction, min_speedup=args.min_speedup)
    if args.command == "inspect":
        report = inspect(args.input, **options)
    else:
        if args.output.resolve() == args.input.resolve():
            raise DecompError(f"{args.output}: output path equals the input; choose another")
        if not args.output.parent.is_dir():
            raise DecompError(f"{args.output.parent}: output folder does not exist")
        try:
            model, report = decompose(args.input, check=args.check, seed=args.seed,
                                      tolerance=Tolerance(args.rtol, args.atol, args.tolerance),
                                      inputs=_load_inputs(args.inputs), support=args.support,
                                      analysis=dict(nulls=args.null, fdr=args.fdr, fdr_scope=args.fdr_scope,
                                                    init_reference=args.init_reference), **options)
        except DecompError as error:
            if getattr(error, "report", None) is not None:
                print(error.report.format())
            raise
        if args.require_change and not report.planned:
            print(report.format())
            print("onnx-decomp: nothing to rewrite (--require-change); nothing written", file=sys.stderr)
            return EXIT_NO_CHANGE
        save_model(model, args.output, external_data=args.save_as_external_data or None)
    print(report.format())
    if args.json:
        report.write_json(args.json)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except DecompError as error:
        print(f"onnx-decomp: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
