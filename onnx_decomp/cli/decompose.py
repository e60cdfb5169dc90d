"""``onnx-decomp decompose IN OUT``: rewrite block-structured MatMul/Gemm into branches, validate, write."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_decomp.cli import annealing, options
from onnx_decomp.config import Tolerance, ValidationConfig
from onnx_decomp.drivers.decompose import decompose
from onnx_decomp.io.arrays import load_arrays
from onnx_decomp.io.model_io import save_model
from onnx_decomp.io.outputs import StagedWrites, optional_read
from onnx_decomp.planning.support import DEFAULT_LOSSY_TOLERANCE, SUPPORTS, support_of

EXIT_NO_CHANGE = 3


def add_parser(commands) -> None:
    parser = commands.add_parser("decompose", parents=[options.model_options(), options.planning_options(),
                                                       options.analysis_options(), options.anneal_options()],
                                 help="rewrite block-structured MatMul/Gemm into branches and validate")
    parser.add_argument("output", type=options.file_path, help="where to write the rewritten model")
    defaults = ValidationConfig()
    parser.add_argument("--check", type=int, default=defaults.check, metavar="N",
                        help="compare outputs on N random input sets in ONNX Runtime (default %(default)s; "
                        "0 skips)")
    parser.add_argument("--rtol", type=float, default=Tolerance.rtol,
                        help="exact support: relative tolerance per element (default %(default)g)")
    parser.add_argument("--atol", type=float, default=Tolerance.atol,
                        help="exact support: absolute tolerance per element (default %(default)g)")
    parser.add_argument("--support", choices=SUPPORTS, default=SUPPORTS[0],
                        help="exact: the nonzero pattern (lossless, default); confirmed: the entries the "
                        "statistical analysis confirms, dropping the rest (lossy; see --null, --fdr)")
    parser.add_argument("--tolerance", type=float, metavar="X",
                        help="compare outputs by relative L2 error <= X instead of per element (default "
                        f"{DEFAULT_LOSSY_TOLERANCE} with --support confirmed)")
    parser.add_argument("--inputs", type=Path, metavar="NPZ",
                        help="validate on these input arrays (keyed by input name) instead of random ones")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random inputs")
    parser.add_argument("--require-change", action="store_true",
                        help=f"exit {EXIT_NO_CHANGE} without writing when nothing is rewritten")
    parser.add_argument("--save-as-external-data", action="store_true",
                        help="write weights to OUTPUT.data (automatic above 2 GiB)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    annealing.check(args)
    if args.anneal:
        return annealing.run(args, EXIT_NO_CHANGE)
    reads = [*options.model_reads(args), *optional_read(args.inputs, "the --inputs file")]
    with StagedWrites(reads) as outputs:
        model_path = outputs.file(args.output, side_files=[args.output.name + ".data"])
        json_path = outputs.file(args.json) if args.json else None
        validation = ValidationConfig(args.check, args.seed, Tolerance(args.rtol, args.atol, args.tolerance),
                                      None if args.inputs is None else load_arrays(args.inputs))
        with options.report_on_failure():
            model, report = decompose(args.input, input_shapes=options.input_shapes(args),
                                      gate=options.gate_config(args), session=options.session_config(args),
                                      support=support_of(args.support, options.analysis_config(args)),
                                      validation=validation, inline_functions=args.inline_functions,
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
