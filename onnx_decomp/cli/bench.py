"""``onnx-decomp bench DENSE DECOMPOSED``: the two models (and their quantized peers) timed side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_decomp.cli import options
from onnx_decomp.config import PROVIDERS, SessionConfig
from onnx_decomp.cost.timing import CLOCKS
from onnx_decomp.drivers.bench import BUDGET_S, PEERS, bench
from onnx_decomp.io.arrays import load_arrays
from onnx_decomp.io.model_io import model_files
from onnx_decomp.io.outputs import StagedWrites

SHAPES = options.ShapeOptions()


def add_parser(commands) -> None:
    parser = commands.add_parser("bench", help="time a model against its decomposition in ONNX Runtime")
    parser.add_argument("input", type=Path, help="the dense model")
    parser.add_argument("decomposed", type=Path, help="its decomposition (written by decompose)")
    parser.add_argument("--batch", type=options.batch_sizes, metavar="B1,B2",
                        help="batch sizes: the first dim of inputs whose first dim is symbolic (default 1,64; with "
                        "--inputs 1 and the rows given)")
    SHAPES.add(parser)  # --input-shape: every symbolic dim of the random data; --batch still sets the first
    parser.add_argument("--inputs", type=Path, metavar="NPZ",
                        help="real inputs keyed by input name instead of random data: the first B rows at --batch B")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="ONNX Runtime intra-op threads (default: ONNX Runtime's, one per core)")
    parser.add_argument("--spin", action="store_true",
                        help="let idle intra-op threads spin (ONNX Runtime's default for one session; here the "
                        "other sessions' spinning threads take the cores of the one timed, so off by default)")
    parser.add_argument("--provider", choices=PROVIDERS, default="cpu",
                        help="where the sessions run (default cpu; cuda fails clearly without a GPU)")
    parser.add_argument("--peer", type=options.names(PEERS), default=(), metavar="S1,S2",
                        help=f"also time both models quantized by ONNX Runtime, per scheme of {','.join(PEERS)} "
                        "(int8-static needs --calib)")
    parser.add_argument("--calib", type=Path, metavar="NPZ",
                        help="calibration inputs keyed by input name for --peer int8-static, one sample a row")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed time (default); cpu: the timing thread's CPU time, steady on a busy "
                        "machine (needs --threads 1)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="S",
                        help="seconds of interleaved rounds per batch size (default %(default)s)")
    parser.add_argument("--json", type=options.file_path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", type=options.file_path, metavar="PNG", help="draw speedup against FLOP reduction")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Outputs are checked and staged before any timing (``io.outputs``) and written only at the end."""
    reads = [*model_files(args.input), *model_files(args.decomposed, "the decomposed model"),
             *((path, option) for path, option in ((args.inputs, "--inputs"), (args.calib, "--calib")) if path)]
    with StagedWrites(reads) as outputs:
        json_path = outputs.file(args.json) if args.json else None
        plot_path = outputs.file(args.plot) if args.plot else None
        inputs = load_arrays(args.inputs, "--inputs") if args.inputs else None
        calib = load_arrays(args.calib, "--calib") if args.calib else None
        session = SessionConfig(args.provider, args.threads, spin=args.spin)
        report = bench(args.input, args.decomposed, args.batch, session, peers=args.peer, calib=calib,
                       budget_s=args.budget, clock=args.clock, input_shapes=SHAPES.parse(args), inputs=inputs)
        if args.inputs:
            report.inputs = str(args.inputs)
        if json_path is not None:
            report.write_json(json_path)
        if plot_path is not None:
            report.plot(plot_path)
        outputs.commit()
    print(report.format())
    return 0
