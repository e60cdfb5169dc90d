"""Arrays the search keeps on disk between their uses.

Rule (memory): what the search holds between its uses and reads whole at each of them (the statistical
evidence; the refitted weights of the state and of the candidates) would otherwise sit in memory beside the
weights a run feeds to ONNX Runtime (one FFN block of a 1.1B-parameter Llama: 132 MiB of weights, 66 MiB of
evidence, up to 132 MiB of fits at once). Such an array (the evidence always; a fit from ``SPILL_BYTES`` on)
is written once to a file of its own in the process's temporary folder and loaded afresh at every use, from
the page cache, as the weights are read from external data: in memory it lives as long as the use that reads
it. A file goes with its handle, the folder when the process exits, or, where the process was killed, when
the next process makes its own; a handle sent to another process (a Ray worker) travels as its values and is
written there again.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Union

import numpy as np

SPILL_BYTES = 1 << 20  # a fit this large or larger is kept on disk; smaller ones cost more in files than they hold
PREFIX, LOCK = "onnx-decomp-spill-", "owner.lock"  # a process's folder, the file it holds locked while it lives


def _sweep(root: Path) -> None:
    """Remove the folders their processes left behind (killed: no exit ran), each found by the lock on its
    ``LOCK`` file, which its process holds as long as it lives, whatever ends it (the kernel lets it go)."""
    for folder in root.glob(PREFIX + "*"):
        try:
            handle = os.open(folder / LOCK, os.O_RDONLY)
        except OSError:
            continue  # not (or no longer) a folder of ours
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its process lives
        else:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(handle)


@functools.cache
def _folder(pid: int) -> Path:
    """This process's temporary folder (``pid``: a forked child makes its own), removed at exit; the folders of
    killed processes are removed first (``_sweep``). Its lock file is locked before it takes its name, so no
    sweep finds it unlocked."""
    _sweep(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    handle, name = tempfile.mkstemp(dir=path)
    fcntl.flock(handle, fcntl.LOCK_EX)  # held, with the descriptor, until the process ends
    os.rename(name, path / LOCK)
    atexit.register(lambda: os.getpid() == pid and shutil.rmtree(path, ignore_errors=True))
    return path


class DiskArray:
    """An array in a file of its own, loaded afresh by every ``load`` (module rule)."""

    def __init__(self, array: np.ndarray):
        handle, name = tempfile.mkstemp(suffix=".npy", dir=_folder(os.getpid()))
        with os.fdopen(handle, "wb") as file:
            np.save(file, array)
        self.path = Path(name)
        weakref.finalize(self, self.path.unlink, missing_ok=True)

    def load(self) -> np.ndarray:
        return np.load(self.path)

    def __reduce__(self):
        return DiskArray, (self.load(),)


Spillable = Union[np.ndarray, DiskArray]


def spilled(array: np.ndarray) -> Spillable:
    """``array`` kept on disk from ``SPILL_BYTES`` on, else as it is."""
    return DiskArray(array) if array.nbytes >= SPILL_BYTES else array


def loaded(value: Spillable) -> np.ndarray:
    return value.load() if isinstance(value, DiskArray) else value
