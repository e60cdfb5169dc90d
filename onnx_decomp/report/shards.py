"""What a shard run did (``drivers.shard``): one row per shard model, its share of the model's work, the
validation of the merged shards against the model, as a console table and JSON.

JSON: ``model``, ``folder``, ``support``, ``shards[]`` (``file``, ``cols`` and ``rows``: how many input columns
it reads and output rows it writes, ``nodes``, ``params``, ``matmul_flops`` at the run's input shapes),
``model_matmul_flops``, ``validation`` (as ``decompose``'s), ``notes``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

from onnx_decomp.cost.model_stats import ModelStats
from onnx_decomp.io.atomic import write_json
from onnx_decomp.report.decomposition import validation_lines
from onnx_decomp.report.table import table
from onnx_decomp.runtime.validation import ValidationResult


@dataclass(frozen=True)
class ShardSummary:
    file: str
    cols: int
    rows: int
    stats: ModelStats


@dataclass
class ShardReport:
    model: str
    folder: str
    support: str
    n_cols: int
    n_rows: int
    model_stats: ModelStats
    shards: list[ShardSummary]
    validation: Optional[ValidationResult] = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        validation = None if self.validation is None else {**asdict(self.validation), "ok": self.validation.ok}
        return {"model": self.model, "folder": self.folder, "support": self.support,
                "shards": [{"file": s.file, "cols": s.cols, "rows": s.rows, **asdict(s.stats)} for s in self.shards],
                "model_matmul_flops": self.model_stats.matmul_flops, "validation": validation, "notes": self.notes}

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        write_json(path, self.to_dict())

    def format(self) -> str:
        """The console view: the shards' table, the validation table, notes."""
        flops = self.model_stats.matmul_flops
        rows = [("shard", "input cols", "output rows", "nodes", "params", "MatMul FLOPs", "of the model's")]
        rows += [(s.file, f"{s.cols}/{self.n_cols}", f"{s.rows}/{self.n_rows}", f"{s.stats.nodes:,}",
                  f"{s.stats.params:,}", f"{s.stats.matmul_flops:,}", f"{s.stats.matmul_flops / max(flops, 1):.1%}")
                 for s in self.shards]
        lines = [f"{self.model}: {len(self.shards)} independent sub-networks ({self.support} support) written to "
                 f"{self.folder} with manifest.json", table(rows)]
        if self.validation is not None:
            lines += ["", *validation_lines(self.validation)]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)
