"""``onnx-decomp shard IN FOLDER``: cut a chain into one model per independent sub-network, write them with
their manifest, prove the merged shards against the model (``drivers.shard``).

The folder is staged and moved into place once everything succeeded, like every output of the tool; a chain
that does not split is refused in one line (exit 2), merged shards that differ from the model exit 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_decomp.cli import options
from onnx_decomp.drivers.shard import shard
from onnx_decomp.io.outputs import StagedWrites, optional_read

MODEL, SHAPES, SESSION = options.ModelOptions(), options.ShapeOptions(), options.SessionOptions()
SUPPORT, VALIDATION = options.SupportOptions(), options.ValidationOptions()


def add_parser(commands) -> None:
    parser = commands.add_parser("shard", help="write each independent sub-network of a chain as a model of its "
                                 "own with a manifest, and validate them merged")
    options.add_all(parser, [MODEL])
    parser.add_argument("folder", type=Path, help="where to write shard<i>.onnx and manifest.json")
    options.add_all(parser, [SHAPES, SESSION, SUPPORT, VALIDATION])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    reads = [*options.model_reads(args), *optional_read(args.inputs, "the --inputs file")]
    with StagedWrites(reads) as outputs:
        folder = outputs.folder(args.folder)
        json_path = outputs.file(args.json) if args.json else None
        with options.report_on_failure():
            report = shard(args.input, folder, input_shapes=SHAPES.parse(args), session=SESSION.parse(args),
                           support=SUPPORT.parse(args), validation=VALIDATION.parse(args),
                           inline_functions=args.inline_functions)
        report.folder = str(args.folder)  # where it will be once committed, not the staging folder
        if json_path is not None:
            report.write_json(json_path)
        outputs.commit()
    print(report.format())
    return 0
