"""onnx-decomp: find the independent sub-operators of a model's MatMul/Gemm/Conv weights and rewrite them.

Subcommands: ``inspect IN``, ``analyze IN``, ``decompose IN OUT``, ``anneal IN OUT``, ``shard IN FOLDER``,
``bench DENSE DECOMPOSED``.

Exit codes: 0 success; 1 the rewritten model failed validation; 2 bad input or usage, or an operating-system
error (a full disk, a name too long); 3 ``--require-change`` and nothing was rewritten; 128 + N stopped by
signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP; 141 SIGPIPE: stdout was closed before the report was
printed). Every failure is one line on stderr, never a traceback, and leaves nothing written: each command
stages its outputs (``io.outputs``), and the way out of a signal, like that of an error, removes the staging.
One module per subcommand (``add_parser``, ``run``); shared option groups in ``options``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from onnx_decomp.cli import analyze, anneal, bench, decompose, inspect, shard
from onnx_decomp.errors import DecompError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other error of the tool."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="onnx-decomp", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logs")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in (inspect, analyze, decompose, anneal, shard, bench):
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


EXIT_SIGNAL = 128  # + the signal's number, as a shell reports a process a signal ended
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT raises KeyboardInterrupt already


class Stopped(BaseException):
    """A stop signal, raised where the run is, so that every ``with`` block on the way out cleans up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """While a command runs (in the main thread, where Python handles signals), SIGTERM and SIGHUP raise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _raise_stopped) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _fail(message: str, code: int) -> int:
    print(f"onnx-decomp: {' '.join(message.split())}", file=sys.stderr)
    return code


def _discard_stdout() -> None:
    """Point a closed stdout at the null device, so that the interpreter's last flush does not fail again."""
    try:
        descriptor = os.open(os.devnull, os.O_WRONLY)
        os.dup2(descriptor, sys.stdout.fileno())
        os.close(descriptor)
    except (OSError, ValueError, AttributeError):  # no descriptor to replace (stdout captured or gone)
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; the exit code (module rule) is returned (usage errors and --help included), never
    raised, and no exception but a bug's escapes."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return stop.code
    _log_to_stderr(args.verbose)
    try:
        with _stop_signals_raise():
            code = args.run(args)
            sys.stdout.flush()  # a closed pipe fails here, not at the interpreter's exit
            return code
    except DecompError as error:
        return _fail(f"error: {error}", error.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted (SIGINT)", EXIT_SIGNAL + signal.SIGINT)
    except Stopped as stop:
        return _fail(f"stopped by {signal.Signals(stop.signum).name}", EXIT_SIGNAL + stop.signum)
    except BrokenPipeError:
        _discard_stdout()
        return _fail("stdout was closed: the report was not printed", EXIT_SIGNAL + signal.SIGPIPE)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        return _fail(f"error: {where}{error.strerror or error}", 2)
