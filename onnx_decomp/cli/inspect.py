"""``onnx-decomp inspect IN``: every MatMul/Gemm with a constant weight, its blocks, what decompose would do."""

from __future__ import annotations

import argparse

from onnx_decomp.cli import options
from onnx_decomp.drivers.decompose import inspect
from onnx_decomp.io.outputs import StagedWrites


MODEL, SHAPES = options.ModelOptions(), options.ShapeOptions()
GATE, SESSION = options.GateOptions(), options.SessionOptions()


def add_parser(commands) -> None:
    parser = commands.add_parser("inspect", help="list MatMul/Gemm weights and their blocks")
    options.add_all(parser, [MODEL, SHAPES, GATE, SESSION])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with StagedWrites(options.model_reads(args)) as outputs:
        json_path = outputs.file(args.json) if args.json else None
        report = inspect(args.input, input_shapes=SHAPES.parse(args), gate=GATE.parse(args),
                         session=SESSION.parse(args), inline_functions=args.inline_functions)
        if json_path is not None:
            report.write_json(json_path)
        outputs.commit()
    print(report.format())
    return 0
