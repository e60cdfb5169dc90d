"""Command line: ``onnx-decomp inspect IN``, ``onnx-decomp decompose IN OUT``, ``onnx-decomp analyze IN``,
``onnx-decomp bench DENSE DECOMPOSED``.

Exit codes: 0 success; 1 the rewritten model failed validation; 2 bad input or usage;
3 ``--require-change`` and nothing was rewritten. On any failure nothing is written.
One module per subcommand (``add_parser``, ``run``); shared option groups in ``options``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from onnx_decomp.cli import analyze, bench, decompose, inspect
from onnx_decomp.errors import DecompError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other error of the tool."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="onnx-decomp", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logs")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in (inspect, analyze, decompose, bench):
        module.add_parser(commands)
    return parser


LOGGERS = ("onnx_decomp", "onnx_decomp_passes")


def _log_to_stderr(verbosity: int) -> None:
    """The package's log lines go to this run's stderr at the asked level (one handler, however often
    ``main`` runs in a process)."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.set_name("onnx-decomp-cli")
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == handler.get_name()]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; the exit code is returned (usage errors and --help included), never raised."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return stop.code
    _log_to_stderr(args.verbose)
    try:
        return args.run(args)
    except DecompError as error:
        print(f"onnx-decomp: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
