"""Reading, checking and writing ONNX models: external data, atomic writes, one error family.

Loading rule: a model is accepted only when ``onnx.checker`` passes its full check, strict shape inference
included (a weight whose shape disagrees with the node reading it is an invalid model, not a candidate),
and every external tensor's bytes lie inside its file at a valid offset.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import onnx
from onnx import external_data_helper

from onnx_decomp.io.atomic import staged_output
from onnx_decomp.errors import InvalidModelError

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
ModelLike = Union[str, os.PathLike, onnx.ModelProto]


def model_label(model: ModelLike) -> str:
    """How reports name a model: its path, or ``<ModelProto>``."""
    return "<ModelProto>" if isinstance(model, onnx.ModelProto) else str(model)


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_graphs(subgraph)


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and Constant-node tensor in ``graph`` and its subgraphs."""
    for one in iter_graphs(graph):
        yield from one.initializer
        for node in one.node:
            yield from (attribute.t for attribute in node.attribute if attribute.HasField("t"))


def _external_info(tensor: onnx.TensorProto) -> external_data_helper.ExternalDataInfo:
    """The tensor's external-data record; an unreadable or negative offset or length is an invalid model."""
    try:
        info = external_data_helper.ExternalDataInfo(tensor)
    except ValueError:
        info = None
    if info is None or (info.offset or 0) < 0 or (info.length or 0) < 0:
        fields = {entry.key: entry.value for entry in tensor.external_data}
        raise InvalidModelError(f"tensor {tensor.name!r}: bad external-data record (offset "
                                f"{fields.get('offset', '-')!r}, length {fields.get('length', '-')!r})")
    return info


def _check_external_sizes(model: onnx.ModelProto, base_dir: Path) -> None:
    """Every external tensor's bytes must exist in its file (a truncated .data file is an error)."""
    for tensor in iter_tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = _external_info(tensor)
        path = base_dir / info.location
        if not path.is_file():
            raise InvalidModelError(f"external data file {path} (tensor {tensor.name!r}) not found")
        needed = (info.offset or 0) + (info.length or 0)
        if info.length and path.stat().st_size < needed:
            raise InvalidModelError(f"external data file {path} is truncated (tensor {tensor.name!r})")


def model_files(path: Union[str, os.PathLike], role: str = "the input model") -> list[tuple[Path, str]]:
    """The model file and the external-data files it names: every file that reading it touches, with what
    it is (for ``io.outputs``). A file that is not a readable model lists itself only."""
    path = Path(path)
    files = [(path, role)]
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: load_model says why
        return files
    for tensor in iter_tensors(proto.graph):
        if external_data_helper.uses_external_data(tensor):
            location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
            files.append((path.parent / location, f"the external data of {role}"))
    return list(dict.fromkeys(files))


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Load a path (with its external data) or take a ModelProto; raise InvalidModelError if unusable."""
    if isinstance(model, onnx.ModelProto):
        proto, path = model, None
    else:
        path = Path(model)
        if not path.is_file():
            raise InvalidModelError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf raises DecodeError and friends for non-ONNX bytes
            raise InvalidModelError(f"{path}: not an ONNX model ({type(error).__name__})") from None
        _check_external_sizes(proto, path.parent)
    try:
        if path is not None:
            external_data_helper.load_external_data_for_model(proto, str(path.parent))
        onnx.checker.check_model(str(path) if path is not None and is_large(proto) else proto, full_check=True)
    except (OSError, ValueError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        message = " ".join((str(error).strip() or type(error).__name__).split())
        raise InvalidModelError(f"{path or 'model'}: invalid ONNX model: {message}") from None
    return proto


def is_large(model: onnx.ModelProto) -> bool:
    """True when the model cannot be serialized as one protobuf (over 2 GiB)."""
    return model.ByteSize() > PROTOBUF_LIMIT


def _write(model: onnx.ModelProto, path: Path, external_data: bool) -> None:
    if external_data:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # save_model strips the tensors it moves out of the proto it is given
        onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def save_model(model: onnx.ModelProto, path: Union[str, os.PathLike],
               external_data: Optional[bool] = None) -> None:
    """Write atomically (``atomic.staged_output``). ``external_data=None`` writes one file unless the
    model is over 2 GiB; external data goes to ``<name>.data`` beside the model."""
    if external_data is None:
        external_data = is_large(model)
    with staged_output(path) as staged:
        _write(model, staged, external_data)
    logger.info("wrote %s%s", path, " (+ external data)" if external_data else "")


@contextmanager
def model_source(model: onnx.ModelProto) -> Iterator[Union[bytes, str]]:
    """What onnx.checker and ONNX Runtime take: bytes, or a temporary path for models over 2 GiB."""
    if not is_large(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnx-decomp-") as folder:
        path = Path(folder) / "model.onnx"
        _write(model, path, external_data=True)
        yield str(path)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape inference; InvalidModelError on failure."""
    try:
        if is_large(model):
            with model_source(model) as path:
                onnx.checker.check_model(path, full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise InvalidModelError(f"rewritten model fails onnx.checker: {error}") from None
