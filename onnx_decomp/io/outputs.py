"""The outputs of a run, checked before any work and moved into place together at the end.

Rules:
- Every path a run writes (a file, its side files such as external data, a folder) is compared, resolved
  (symlinks and ``..`` followed, hard links by inode), with every path the run reads and with the other
  writes: a write may not land on a read, on another write, or inside a folder written. A file target may
  not be an existing folder nor anything else that is not a regular file (a device, pipe or socket is never
  replaced), a folder target not an existing file, and each target's folder must exist.
- A staging folder ``.onnx-decomp-*`` is made beside each target at once, which proves the folder writable,
  and every file name a target will have there (its side files too) is created and removed in it, which
  proves the names possible (a name too long for ``OUT.data`` fails before any work); the run writes there.
  ``commit`` renames everything staged into place, side files first and the target registered first (the
  main output) last; a folder target is merged into an existing folder of that name.
  Leaving the ``with`` block removes whatever is still staged, so a failed run writes nothing; stop signals
  wait while ``commit`` moves, so a run stopped by one has moved all of its outputs or none.
Each violation is a ``DecompError`` (exit 2) with one line.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

from onnx_decomp.errors import DecompError
from onnx_decomp.io.atomic import check_replaceable

PathLike = Union[str, os.PathLike]


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _merge(source: Path, target: Path) -> None:
    """Move the tree ``source`` into the folder ``target``, which may exist already."""
    if not target.exists():
        os.replace(source, target)
        return
    for entry in source.iterdir():
        if entry.is_dir():
            _merge(entry, target / entry.name)
        else:
            os.replace(entry, target / entry.name)


@contextmanager
def _signals_wait() -> Iterator[None]:
    """Stop signals are held back (POSIX) until the block is done."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} if hasattr(signal, "pthread_sigmask") else set()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if held else None
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StagedWrites:
    """The staged outputs of one run (module rules). ``reads``: (path, what it is) pairs."""

    def __init__(self, reads: Iterable[tuple[PathLike, str]]):
        self.reads = [(Path(os.path.realpath(path)), role) for path, role in reads]
        self.writes: list[tuple[Path, str]] = []  # resolved path, how the user named it
        self.staged: list[tuple[Path, Path, bool]] = []  # staged path, target, is a folder
        self.staging: dict[Path, Path] = {}  # target folder -> its staging folder

    def __enter__(self) -> "StagedWrites":
        return self

    def __exit__(self, *exc) -> None:
        for staging in self.staging.values():
            shutil.rmtree(staging, ignore_errors=True)

    def _claim(self, target: Path, shown: str) -> None:
        for read, role in self.reads:
            if _same(target, read):
                raise DecompError(f"{shown}: output path equals {role} {read}; choose another")
        for written, other in self.writes:
            if _same(target, written):
                raise DecompError(f"{shown}: written twice by this run (also as {other}); choose another")
            if written in target.parents or target in written.parents:
                raise DecompError(f"{shown}: lies inside another output of this run ({other}), or holds it")
        self.writes.append((target, shown))

    def _stage_in(self, folder: Path, shown: str) -> Path:
        if not folder.is_dir():
            raise DecompError(f"{folder}: output folder does not exist ({shown})")
        if folder not in self.staging:
            try:
                self.staging[folder] = Path(tempfile.mkdtemp(prefix=".onnx-decomp-", dir=folder))
            except OSError as error:
                raise DecompError(f"{folder}: cannot write there ({error.strerror or error})") from None
        return self.staging[folder]

    def file(self, target: PathLike, side_files: Sequence[str] = ()) -> Path:
        """Register a file (and side files named ``side_files`` beside it); returns where to write it."""
        shown, target = str(target), Path(os.path.realpath(target))
        if target.is_dir():
            raise DecompError(f"{shown}: is a folder, not a file")
        for path in (shown, *(target.with_name(name) for name in side_files)):
            check_replaceable(path)
        self._claim(target, shown)
        for name in side_files:
            self._claim(target.with_name(name), f"{shown} (its {name})")
        staging = self._stage_in(target.parent, shown)
        for name in (target.name, *side_files):
            try:
                (staging / name).touch(exist_ok=False)
                (staging / name).unlink()
            except OSError as error:
                raise DecompError(f"{shown}: cannot write {name} there ({error.strerror or error})") from None
        self.staged.append((staging / target.name, target, False))
        return staging / target.name

    def folder(self, target: PathLike) -> Path:
        """Register a folder; returns the folder to write its contents in."""
        shown, target = str(target), Path(os.path.realpath(target))
        if target.exists() and not target.is_dir():
            raise DecompError(f"{shown}: is a file, not a folder")
        self._claim(target, shown)
        staged = self._stage_in(target.parent, shown) / target.name
        staged.mkdir()
        self.staged.append((staged, target, True))
        return staged

    def commit(self) -> None:
        """Move everything staged into place (module rules for the order and for signals)."""
        primary = {staged for staged, _, _ in self.staged}
        with _signals_wait():
            for staging in self.staging.values():
                for entry in staging.iterdir():
                    if entry not in primary:
                        os.replace(entry, staging.parent / entry.name)
            for staged, target, is_folder in reversed(self.staged):
                if is_folder:
                    _merge(staged, target)
                else:
                    os.replace(staged, target)


def optional_read(path: Optional[PathLike], role: str) -> list[tuple[PathLike, str]]:
    return [] if path is None else [(path, role)]
