"""Atomic outputs: write into a staging folder beside the target, then rename into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


@contextmanager
def staged_output(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a staging path for ``path``; on success every file written beside it is renamed into
    ``path``'s folder (the file named like ``path`` last), on failure nothing is left behind."""
    path = Path(path)
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
