"""The statistical evidence the search plans from, kept on disk and read where it is used.

Rule (memory): a weight's evidence (``stats.analyze``: float16, two bytes per entry) is read only when a
family scores its units and when a unit plans a rung; kept in memory through the search, it would be half as
large as the weights beside it (one FFN block of a 1.1B-parameter Llama: 66 MiB of evidence, 132 MiB of
weights). So each weight's evidence is written once to a file of its own (``search.on_disk``) and every
lookup loads its array afresh: an array lives as long as the planning that reads it. The files go when the
last view of them does.
"""

from __future__ import annotations

from typing import Hashable, Iterator, Mapping, Optional

import numpy as np

from onnx_decomp.search.on_disk import DiskArray


class StoredEvidence(Mapping):
    """Key -> a weight's evidence, loaded from its file at every lookup (``None``: a weight without any)."""

    def __init__(self, arrays: Mapping[Hashable, Optional[DiskArray]]):
        self._arrays = dict(arrays)

    @classmethod
    def write(cls, evidence: Mapping[str, np.ndarray]) -> "StoredEvidence":
        """Weight name -> evidence, each array written to a file of its own (module rule)."""
        return cls({name: DiskArray(array) for name, array in evidence.items()})

    def keyed(self, names: Mapping[Hashable, str]) -> "StoredEvidence":
        """The evidence of ``names``' weights under their keys (e.g. layer sites), from the same files."""
        return StoredEvidence({key: self._arrays.get(name) for key, name in names.items()})

    def __getitem__(self, key: Hashable) -> Optional[np.ndarray]:
        array = self._arrays[key]
        return None if array is None else array.load()

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)
