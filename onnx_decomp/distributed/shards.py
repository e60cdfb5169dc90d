"""Shard models: a chain cut into independent sub-networks end to end, written as one model per sub-network
and a manifest that says how to run them and merge their outputs.

Rules:
- ``write_shards`` cuts the model's chain under per-layer block plans (``onnx_decomp_passes.shards``: the
  chain's form, the sub-networks, the refusals) and writes ``shard<i>.onnx`` per sub-network and
  ``manifest.json`` into a folder, all at once or nothing (a refusal is one ``UnsupportedConstructError``).
- The manifest names, per shard, its file, the input it reads (the model's input; the shard gathers the
  columns ``cols`` of it itself) and the output it writes (the rows ``rows`` of the model's output, in order);
  and the merge: the shards' outputs concatenated on the last axis, then taken at ``inverse`` (the inverse
  permutation of the rows concatenated), is the model's output where its weights are zero outside the plans.
- Shard files are named relative to the manifest's folder, so a folder moves whole.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

from onnx_decomp.context import ModelContext
from onnx_decomp.errors import InvalidModelError, UnsupportedConstructError
from onnx_decomp.io.atomic import staged_output
from onnx_decomp.io.graph import export_graph
from onnx_decomp.io.model_io import ModelLike, check_model, save_model
from onnx_decomp.io.shapes import InputShapes
from onnx_decomp_passes import BlockPlan, Site
from onnx_decomp_passes.shards import shard_chain

logger = logging.getLogger(__name__)

FORMAT = "onnx-decomp shards 1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a manifest (module rule)."""

    file: str
    input: str
    cols: np.ndarray
    output: str
    rows: np.ndarray


@dataclass(frozen=True)
class Manifest:
    """The shards of one model, their folder and the merge (module rule)."""

    folder: Path
    input: str
    output: str
    shards: tuple[ShardEntry, ...]

    @property
    def inverse(self) -> np.ndarray:
        """Where each output row lies in the shards' outputs concatenated."""
        return np.argsort(np.concatenate([shard.rows for shard in self.shards]))

    def path(self, shard: ShardEntry) -> str:
        return str(self.folder / shard.file)

    def merge(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The model's output from the shards' (module rule)."""
        return np.take(np.concatenate(list(outputs), axis=-1), self.inverse, axis=-1)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "input": self.input, "output": self.output,
                "shards": [{"file": s.file, "input": s.input, "cols": s.cols.tolist(), "output": s.output,
                            "rows": s.rows.tolist()} for s in self.shards],
                "merge": {"op": "Concat", "axis": -1, "inverse": self.inverse.tolist()}}

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Manifest":
        """The manifest at ``path`` (its file or its folder); an ``InvalidModelError`` when it is not one."""
        path = Path(path)
        path = path / MANIFEST if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
            shards = tuple(ShardEntry(s["file"], s["input"], np.asarray(s["cols"], np.int64), s["output"],
                                      np.asarray(s["rows"], np.int64)) for s in data["shards"])
            made = cls(path.parent, data["input"], data["output"], shards)
            agrees = data["format"] == FORMAT and np.array_equal(made.inverse, data["merge"]["inverse"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InvalidModelError(f"{path} is not a shard manifest: {error}") from None
        if not agrees:
            raise InvalidModelError(f"{path} is not a shard manifest of format '{FORMAT}' with its rows' inverse")
        return made


def write_shards(model: Union[ModelLike, ModelContext], plans: Mapping[Site, BlockPlan],
                 folder: Union[str, os.PathLike], input_shapes: InputShapes = None) -> Manifest:
    """Cut ``model``'s chain (or a loaded one's) under ``plans`` into shard models and write them with their
    manifest into ``folder`` (module rules); the manifest."""
    ctx = model if isinstance(model, ModelContext) else ModelContext.load(model, input_shapes)
    shards = shard_chain(ctx.graph, plans)
    if isinstance(shards, str):
        raise UnsupportedConstructError(f"cannot shard {ctx.label}: {shards}")
    protos = [export_graph(shard.graph, like=ctx.proto) for shard in shards]
    for proto in protos:
        check_model(proto)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source, output = ctx.graph.inputs[0].name, ctx.graph.outputs[0].name
    manifest = Manifest(folder, source, output, tuple(ShardEntry(f"shard{i}.onnx", source, shard.cols, output,
                                                                 shard.rows) for i, shard in enumerate(shards)))
    with staged_output(folder / MANIFEST) as staged:
        for entry, proto in zip(manifest.shards, protos):
            save_model(proto, staged.parent / entry.file)
        staged.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    logger.info("%d shards of %s in %s: %s output rows", len(shards), ctx.label, folder,
                " + ".join(str(len(entry.rows)) for entry in manifest.shards))
    return manifest
