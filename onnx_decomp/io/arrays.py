"""Named input arrays from an ``.npz`` file (``numpy.savez(path, input_name=array, ...)``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from onnx_decomp.errors import DecompError


def load_arrays(path: Path, option: str = "--inputs") -> dict[str, np.ndarray]:
    """Every array of the archive by name; anything else (a missing file, an ``.npy`` array, pickled
    objects) is a one-line error naming ``option``."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DecompError(f"{option} {path}: cannot read input arrays ({error})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DecompError(f"{option} {path}: a single array, not an .npz archive of named arrays "
                          "(save one with numpy.savez(path, input_name=array))")
    with data:
        try:
            return {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DecompError(f"{option} {path}: cannot read input arrays ({error})") from None
