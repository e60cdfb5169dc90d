"""``onnx-decomp analyze IN``: every MatMul/Gemm/Conv weight entry tested against its initialization (null)
distribution; ``--input-shape`` sets the shapes the work shares are counted at."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_decomp.cli import options
from onnx_decomp.context import ModelContext
from onnx_decomp.io.outputs import StagedWrites
from onnx_decomp.stats.analyze import analyze_context


MODEL, SHAPES, ANALYSIS = options.ModelOptions(), options.ShapeOptions(), options.AnalysisOptions(edges=True)


def add_parser(commands) -> None:
    parser = commands.add_parser("analyze",
                                 help="test every weight entry against its initialization (null) distribution")
    options.add_all(parser, [MODEL, SHAPES, ANALYSIS])
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write DIR/report.json and DIR/figures/*.png (histograms, permuted supports)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = ANALYSIS.parse(args)
    with StagedWrites(options.model_reads(args)) as outputs:
        report_dir = outputs.folder(args.report) if args.report is not None else None
        json_path = outputs.file(args.json) if args.json else None
        ctx = ModelContext.load(args.input, SHAPES.parse(args), inline_functions=args.inline_functions)
        report = analyze_context(ctx, config, report_dir=report_dir, figures=not args.no_figures)
        if report_dir is not None:
            report.write_json(report_dir / "report.json")
        if json_path is not None:
            report.write_json(json_path)
        outputs.commit()
    print(report.format())
    return 0
