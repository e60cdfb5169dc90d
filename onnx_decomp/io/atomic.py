"""Atomic outputs: write into a staging folder beside the target, then rename into place. A target is a new
name or a regular file: a device, pipe or socket (``/dev/null``, ``/dev/stdout``) is never replaced. JSON is
written as the standard defines it: a number that is not finite (an infinite FLOP reduction) is ``null``."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from onnx_decomp.errors import DecompError


def check_replaceable(path: Union[str, os.PathLike]) -> None:
    """A DecompError when ``path`` (symlinks followed) exists and is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # nothing there (or no name the system takes: writing will say)
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DecompError(f"{path}: not a regular file (a device, pipe or socket): never replaced; "
                          "give a file path")


@contextmanager
def staged_output(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a staging path for ``path``; on success every file written beside it is renamed into
    ``path``'s folder (the file named like ``path`` last), on failure nothing is left behind."""
    path = Path(path)
    check_replaceable(path)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-decomp-", dir=path.parent))
    try:
        yield staging / path.name
        for name in sorted(os.listdir(staging), key=lambda n: n == path.name):
            os.replace(staging / name, path.parent / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: Union[str, os.PathLike], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with staged_output(path) as staged:
        staged.write_text(text)


def _json_ready(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and floats that are not finite as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def write_json(path: Union[str, os.PathLike], data: Any) -> None:
    """Write ``data`` as standard JSON (module rule), atomically."""
    write_text(path, json.dumps(_json_ready(data), indent=2, allow_nan=False) + "\n")
