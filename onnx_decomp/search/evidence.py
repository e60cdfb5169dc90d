"""The statistical evidence the search plans from, kept on disk and read where it is used.

Rule (memory): a weight's evidence (``stats.analyze``: float16, two bytes per entry) is read only when a
family scores its units and when a unit plans a rung; kept in memory through the search, it would be half as
large as the weights beside it (one FFN block of a 1.1B-parameter Llama: 66 MiB of evidence, 132 MiB of
weights). So it is written once to a temporary folder, one ``.npy`` file per weight, and every lookup loads
its array afresh (from the page cache, as the weights are read from external data): an array lives as long
as the planning that reads it. The folder goes when the last view of it does.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Hashable, Iterator, Mapping, Optional

import numpy as np


class _Folder:
    """A temporary folder removed when this object is collected (or at exit)."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="onnx-decomp-evidence-"))
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)


class StoredEvidence(Mapping):
    """Key -> a weight's evidence, loaded from its file at every lookup (``None``: a weight without any)."""

    def __init__(self, paths: Mapping[Hashable, Optional[Path]], folder: _Folder):
        self._paths, self._folder = dict(paths), folder

    @classmethod
    def write(cls, evidence: Mapping[str, np.ndarray]) -> "StoredEvidence":
        """Weight name -> evidence, each array written to a new temporary folder (module rule)."""
        folder, paths = _Folder(), {}
        for number, (name, array) in enumerate(evidence.items()):
            paths[name] = folder.path / f"{number}.npy"
            np.save(paths[name], array)
        return cls(paths, folder)

    def keyed(self, names: Mapping[Hashable, str]) -> "StoredEvidence":
        """The evidence of ``names``' weights under their keys (e.g. layer sites), from the same files."""
        return StoredEvidence({key: self._paths.get(name) for key, name in names.items()}, self._folder)

    def __getitem__(self, key: Hashable) -> Optional[np.ndarray]:
        path = self._paths[key]
        return None if path is None else np.load(path)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)
