"""``onnx-decomp decompose IN OUT --anneal``: the most decomposed model within a measured fidelity budget.

Options of the ``anneal_options`` group are refused without ``--anneal``; ``--support`` other than exact is
refused with it (annealing plans its own support). Without ``--calib`` a warning goes to stderr (and into the
report). Outputs (the model, ``--json``, ``--report DIR``) are staged and moved into place together once
everything succeeded (``io.outputs.StagedWrites``); the calibration files count as reads.
"""

from __future__ import annotations

import argparse
import sys

from onnx_decomp.cli import options
from onnx_decomp.drivers.anneal import anneal
from onnx_decomp.errors import DecompError
from onnx_decomp.io.model_io import save_model
from onnx_decomp.io.outputs import StagedWrites, optional_read

ANNEAL_ONLY = {"calib": None, "labels": None, "blocks": None, "no_refit": False, "unbalanced": False,
               "square": [], "report": None}


def check(args: argparse.Namespace) -> None:
    """Anneal-only options need ``--anneal``; ``--anneal`` needs the exact support."""
    if not args.anneal:
        given = [name for name, default in ANNEAL_ONLY.items() if getattr(args, name) != default]
        if given:
            raise DecompError(f"--{given[0].replace('_', '-')} needs --anneal")
    elif args.support != "exact":
        raise DecompError("--anneal plans its own support: drop --support")


def run(args: argparse.Namespace, exit_no_change: int) -> int:
    """Anneal, write what was asked, print the report (module rule)."""
    reads = [*options.model_reads(args), *optional_read(args.inputs, "the --inputs file"),
             *optional_read(args.calib, "the --calib file"), *optional_read(args.labels, "the --labels file")]
    with StagedWrites(reads) as outputs:
        model_path = outputs.file(args.output, side_files=[args.output.name + ".data"])
        json_path = outputs.file(args.json) if args.json else None
        report_dir = outputs.folder(args.report) if args.report is not None else None
        if args.calib is None:
            print("onnx-decomp: WARNING: no --calib: fidelity is measured on random inputs", file=sys.stderr)
        with options.report_on_failure():
            model, report = anneal(args.input, args.calib, labels=args.labels, inputs=args.inputs,
                                   config=options.anneal_config(args), analysis=options.analysis_config(args),
                                   input_shapes=options.input_shapes(args), gate=options.gate_config(args),
                                   session=options.session_config(args), inline_functions=args.inline_functions)
        if args.require_change and not report.accepted:
            print(report.format())
            print("onnx-decomp: annealing accepted nothing (--require-change); nothing written", file=sys.stderr)
            return exit_no_change
        save_model(model, model_path, external_data=args.save_as_external_data or None)
        if report_dir is not None:
            report.write_folder(report_dir, final=args.report)
        if json_path is not None:
            report.write_json(json_path)
        outputs.commit()
    print(report.format())
    return 0
