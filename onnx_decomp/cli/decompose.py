"""``onnx-decomp decompose IN OUT``: rewrite block-structured MatMul/Gemm into branches, validate, write.

Annealing is its own subcommand (``onnx-decomp anneal``); ``decompose --anneal`` is refused with one line
that says so.
"""

from __future__ import annotations

import argparse
import sys

from onnx_decomp.cli import options
from onnx_decomp.drivers.decompose import decompose
from onnx_decomp.errors import DecompError
from onnx_decomp.io.model_io import save_model
from onnx_decomp.io.outputs import StagedWrites, optional_read

EXIT_NO_CHANGE = 3
MODEL, SHAPES, GATE, SESSION = (options.ModelOptions(output=True), options.ShapeOptions(), options.GateOptions(),
                                options.SessionOptions())
SUPPORT, VALIDATION, WRITE = options.SupportOptions(), options.ValidationOptions(), options.WriteOptions()


def add_parser(commands) -> None:
    parser = commands.add_parser("decompose", help="rewrite block-structured MatMul/Gemm into branches and validate")
    options.add_all(parser, [MODEL, SHAPES, GATE, SESSION, SUPPORT, VALIDATION, WRITE])
    parser.add_argument("--anneal", action="store_true", help=argparse.SUPPRESS)  # moved: refused with a pointer
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.anneal:
        raise DecompError("annealing is its own command now: onnx-decomp anneal IN OUT --calib DATA.npz "
                          "[--tolerance X] (see onnx-decomp anneal --help)")
    reads = [*options.model_reads(args), *optional_read(args.inputs, "the --inputs file")]
    with StagedWrites(reads) as outputs:
        model_path = outputs.file(args.output, side_files=[args.output.name + ".data"])
        json_path = outputs.file(args.json) if args.json else None
        with options.report_on_failure():
            model, report = decompose(args.input, input_shapes=SHAPES.parse(args), gate=GATE.parse(args),
                                      session=SESSION.parse(args),
                                      support=SUPPORT.parse(args),
                                      validation=VALIDATION.parse(args), inline_functions=args.inline_functions,
                                      references=True)
        if args.require_change and not report.planned:
            print(report.format())
            print("onnx-decomp: nothing to rewrite (--require-change); nothing written", file=sys.stderr)
            return EXIT_NO_CHANGE
        save_model(model, model_path, external_data=args.save_as_external_data or None,
                   base_dir=args.input.parent)
        if json_path is not None:
            report.write_json(json_path)
        outputs.commit()
    print(report.format())
    return 0
