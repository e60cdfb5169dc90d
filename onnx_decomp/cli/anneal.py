"""``onnx-decomp anneal IN OUT --calib C``: the most decomposed model within a measured fidelity budget.

Options are the model's, the input shapes, the cost gate and provider of the exact rewrite, the statistical
criterion (the evidence annealing weighs), and annealing's own (``options.AnnealOptions``: calibration data,
``--tolerance`` as the fidelity budget, structures, report). Outputs (the model, ``--json``, ``--report DIR``)
are staged and moved into place together once everything succeeded (``io.outputs.StagedWrites``); the data
files count as reads. Without ``--calib`` a warning goes to stderr (and into the report). ``--by-block``
anneals one block at a time (``drivers.by_block``; the model is written as it goes, into the staged path),
``--workers``/``--ray-address`` run the search's folds on Ray (``distributed``).
"""

from __future__ import annotations

import argparse
import sys

from onnx_decomp.cli import options
from onnx_decomp.cli.decompose import EXIT_NO_CHANGE
from onnx_decomp.drivers.anneal import anneal
from onnx_decomp.drivers.by_block import anneal_by_block
from onnx_decomp.errors import DecompError
from onnx_decomp.io.model_io import save_model
from onnx_decomp.io.outputs import StagedWrites, optional_read

MODEL, SHAPES, GATE, SESSION = (options.ModelOptions(output=True), options.ShapeOptions(), options.GateOptions(),
                                options.SessionOptions())
ANALYSIS, ANNEAL, WRITE = options.AnalysisOptions(), options.AnnealOptions(), options.WriteOptions()
CLUSTER = options.ClusterOptions()


def add_parser(commands) -> None:
    parser = commands.add_parser("anneal", help="cut the most structure whose fidelity on calibration data stays "
                                 "within --tolerance, refit it, rewrite exactly (lossy: see the report)")
    options.add_all(parser, [MODEL, SHAPES, GATE, SESSION, ANALYSIS, ANNEAL, CLUSTER, WRITE])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Anneal, write what was asked, print the report (module rule)."""
    if args.by_block and args.report is not None:
        raise DecompError("--by-block writes no --report folder: use --json")
    if args.stream_tolerance is not None and not args.by_block:
        raise DecompError("--stream-tolerance is the budget between blocks: it needs --by-block")
    if args.work_folder is not None and not args.by_block:
        raise DecompError("--work-folder holds the block files: it needs --by-block")
    reads = [*options.model_reads(args), *optional_read(args.inputs, "the --inputs file"),
             *optional_read(args.calib, "the --calib file"), *optional_read(args.labels, "the --labels file")]
    with StagedWrites(reads) as outputs:
        model_path = outputs.file(args.output, side_files=[args.output.name + ".data"])
        json_path = outputs.file(args.json) if args.json else None
        report_dir = outputs.folder(args.report) if args.report is not None else None
        common = dict(labels=args.labels, inputs=args.inputs, config=ANNEAL.parse(args), analysis=ANALYSIS.parse(args),
                      input_shapes=SHAPES.parse(args), gate=GATE.parse(args), session=SESSION.parse(args),
                      inline_functions=args.inline_functions, cluster=CLUSTER.parse(args))
        with options.report_on_failure():
            if args.by_block:  # writes the model itself, block by block
                model, report = None, anneal_by_block(args.input, model_path, args.calib,
                                                      stream_tolerance=args.stream_tolerance,
                                                      work_folder=args.work_folder, **common)
            else:
                model, report = anneal(args.input, args.calib, **common)
        if args.calib is None:
            print("onnx-decomp: WARNING: no --calib: fidelity is measured on random inputs", file=sys.stderr)
        if args.require_change and not report.accepted:
            print(report.format())
            print("onnx-decomp: annealing accepted nothing (--require-change); nothing written", file=sys.stderr)
            return EXIT_NO_CHANGE
        if model is not None:
            save_model(model, model_path, external_data=args.save_as_external_data or None)
        if report_dir is not None:
            report.write_folder(report_dir, final=args.report)
        if json_path is not None:
            report.write_json(json_path)
        outputs.commit()
    print(report.format())
    return 0
