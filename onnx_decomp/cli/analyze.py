"""``onnx-decomp analyze IN``: every weight entry tested against its initialization (null) distribution."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from onnx_decomp.cli import options
from onnx_decomp.config import EDGE_MODES
from onnx_decomp.context import ModelContext
from onnx_decomp.errors import DecompError
from onnx_decomp.stats.analyze import analyze_context


def add_parser(commands) -> None:
    parser = commands.add_parser("analyze", parents=[options.model_options(), options.analysis_options()],
                                 help="test every weight entry against its initialization (null) distribution")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write DIR/report.json and DIR/figures/*.png (histograms, permuted supports)")
    parser.add_argument("--edges", choices=EDGE_MODES, default=EDGE_MODES[0],
                        help="grouped: also decide the multi-channel edges of layer chains (Fisher)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Analyse; a report folder this run created is removed again if the analysis fails."""
    config = options.analysis_config(args, edges=args.edges)
    created = args.report is not None and not args.report.exists()
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
    try:
        report = analyze_context(ModelContext.load(args.input), config, report_dir=args.report,
                                 figures=not args.no_figures)
    except DecompError:
        if created:
            shutil.rmtree(args.report, ignore_errors=True)
        raise
    if args.report is not None:
        report.write_json(args.report / "report.json")
    options.emit(report, args.json)
    return 0
