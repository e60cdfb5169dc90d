"""What a model may reference: files inside its own folder, nothing else.

Rule: a path a model file records (an external-data ``location`` of any tensor, at any depth; the init
reference in its metadata) is a relative path whose real path, with ``..`` and symlinks resolved, lies
inside the real path of the model's folder (subfolders included). An absolute path, a ``..`` that climbs
out, or a symlink pointing outside is refused with one line: a model cannot make the tool read a file its
author placed elsewhere, nor copy it into an output (the class of onnx's CVE-2024-27318/27319). Paths a
user gives on the command line (``--init-reference``, ``--inputs``) are the user's own and not bound by it.
"""

from __future__ import annotations

import os
from pathlib import Path

from onnx_decomp.errors import InvalidModelError


def inside(folder: Path, location: str, what: str) -> Path:
    """The file ``location`` names relative to ``folder`` (the model's), if the module rule allows it."""
    try:
        root = Path(os.path.realpath(folder))
        target = Path(os.path.realpath(root / location))
    except (ValueError, OSError):  # a NUL byte, a symlink loop
        target = None
    if target is None or os.path.isabs(location) or root not in target.parents:
        raise InvalidModelError(f"{what} {location!r} lies outside the model's folder {folder}: a model may "
                                "reference only files inside its own folder")
    return target
