"""Reading, checking and writing ONNX models: external data, atomic writes, one error family.

Loading rule: a model is accepted only when ``onnx.checker`` passes its full check, strict shape inference
included (a weight whose shape disagrees with the node reading it is an invalid model, not a candidate),
every external tensor's file lies inside the model's folder (``io.references``) and its bytes lie inside
that file at a valid offset. A model holding references to external data, or over ``MAPPED_BYTES``, is
checked as its weight-free skeleton (``io.shapes.skeleton``: large weights as typed inputs, small tensors
read in), which the checker can hold at any size, and its large tensors held in the model one by one (the
checker serializes what it checks: a whole model's check would hold its bytes twice more at once).

Large models: a file's external tensors may stay on disk as references relative to its folder (``base_dir``)
and be read one at a time when needed; writing a model that holds such references copies their bytes into
its own external-data file tensor by tensor. Writing never touches the model, nor copies its large tensors.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import external_data_helper, helper, numpy_helper

from onnx_decomp.errors import InvalidModelError
from onnx_decomp.io.atomic import staged_output
from onnx_decomp.io.references import inside
from onnx_decomp.io.shapes import SMALL_TENSOR, skeleton
from onnx_decomp.io.walk import copied, iter_tensors

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay inside the model file
MAPPED_BYTES = 64 * 2**20  # a ModelProto over this reaches ONNX Runtime as a file with external data
ModelLike = Union[str, os.PathLike, onnx.ModelProto]


def model_label(model: ModelLike) -> str:
    """How reports name a model: its path, or ``<ModelProto>``."""
    return "<ModelProto>" if isinstance(model, onnx.ModelProto) else str(model)


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


def _external_path(tensor: onnx.TensorProto, base_dir: Path) -> Path:
    """The file holding an external tensor's bytes, inside ``base_dir`` (``io.references``)."""
    return inside(base_dir, _external_info(tensor).location, f"tensor {tensor.name!r}: external data")


def _check_external_sizes(model: onnx.ModelProto, base_dir: Path) -> None:
    """Every external tensor's file lies inside the model's folder and holds its bytes (a truncated .data
    file is an error)."""
    for tensor in iter_tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info, path = _external_info(tensor), _external_path(tensor, base_dir)
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


def load_model(model: ModelLike, external_data: bool = True) -> onnx.ModelProto:
    """Load a path or take a ModelProto; raise InvalidModelError if unusable. A file's external data is read
    into the proto, or with ``external_data=False`` left on disk as references (module rule)."""
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
            load_references(proto, path.parent, max_elements=None if external_data else SMALL_TENSOR)
        _full_check(proto)
    except (OSError, ValueError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        message = " ".join((str(error).strip() or type(error).__name__).split())
        raise InvalidModelError(f"{path or 'model'}: invalid ONNX model: {message}") from None
    return proto


def _full_check(model: onnx.ModelProto) -> None:
    """onnx.checker's full check of the model, or of its skeleton and large tensors (module rule)."""
    if not has_external_data(model) and not is_large(model, MAPPED_BYTES):
        onnx.checker.check_model(model, full_check=True)
        return
    onnx.checker.check_model(skeleton(model), full_check=True)
    for tensor in model.graph.initializer:
        if int(np.prod(tensor.dims)) > SMALL_TENSOR and not external_data_helper.uses_external_data(tensor):
            onnx.checker.check_tensor(tensor)


def is_large(model: onnx.ModelProto, limit: int = PROTOBUF_LIMIT) -> bool:
    """True when the model's serialized size is over ``limit`` bytes (by default: it cannot be serialized as
    one protobuf, over 2 GiB)."""
    try:
        return model.ByteSize() > limit
    except EncodeError:  # the protobuf runtime refuses even to size a message past its limit
        return True


def load_references(model: onnx.ModelProto, base_dir: Optional[Path], max_elements: Optional[int] = None) -> None:
    """Read the bytes of every referenced tensor (of at most ``max_elements`` elements, if given) from its
    file under ``base_dir`` into the model itself."""
    if base_dir is None:
        return
    for tensor in iter_tensors(model.graph):
        if external_data_helper.uses_external_data(tensor) and \
                (max_elements is None or int(np.prod(tensor.dims)) <= max_elements):
            external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def has_external_data(model: onnx.ModelProto) -> bool:
    """True when some tensor of the model is a reference to a file."""
    return any(external_data_helper.uses_external_data(t) for t in iter_tensors(model.graph))


def _read_external(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    """The bytes a tensor's external-data record points to, in a file under ``base_dir``."""
    info = _external_info(tensor)
    with open(_external_path(tensor, base_dir), "rb") as handle:
        handle.seek(info.offset or 0)
        return handle.read(info.length) if info.length else handle.read()


def _refer(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """``tensor`` (without an external-data record yet) referenced at ``offset`` in the file ``location`` beside
    the model."""
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.extend(onnx.StringStringEntryProto(key=key, value=str(value))
                                for key, value in (("location", location), ("offset", offset), ("length", length)))


def _goes_external(size: int, nbytes: int) -> bool:
    """Whether a tensor of ``size`` elements and ``nbytes`` bytes is written to external data (module rule)."""
    return nbytes >= EXTERNAL_THRESHOLD and size > SMALL_TENSOR


def stored_tensor(array: np.ndarray, name: str, data: Optional[BinaryIO] = None) -> onnx.TensorProto:
    """``array`` as a tensor named ``name``: inline, or, given the open file ``data`` (written beside the model)
    and as large as ``_write_external`` writes out, its bytes appended to ``data`` and referenced there."""
    if data is None or not _goes_external(array.size, array.nbytes):
        return numpy_helper.from_array(array, name)
    tensor = onnx.TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
    _refer(tensor, Path(data.name).name, data.tell(), array.nbytes)
    data.write(memoryview(np.ascontiguousarray(array)))
    return tensor


def _write_external(model: onnx.ModelProto, path: Path, base_dir: Optional[Path]) -> None:
    """``path`` plus ``<name>.data`` holding the raw bytes of every tensor of at least ``EXTERNAL_THRESHOLD``
    bytes and ``SMALL_TENSOR`` elements and every referenced tensor's bytes (read from ``base_dir``). ``path``
    holds a copy of ``model`` whose such tensors refer to the data file instead (``walk.copied``: their bytes
    are never copied), and ``model`` is not touched (moving bytes out of a model's tensors and back grew the
    process by the model's size at every write: protobuf's upb keeps cleared bytes in the model's arena).
    Tensors stored in typed fields rather than raw bytes stay inline."""
    location = path.name + ".data"
    with open(path.with_name(location), "wb") as data:
        def stored(tensor: onnx.TensorProto) -> onnx.TensorProto:
            reference = external_data_helper.uses_external_data(tensor)
            raw = _read_external(tensor, Path(base_dir or ".")) if reference else tensor.raw_data
            if not reference and not _goes_external(int(np.prod(tensor.dims)), len(raw)):
                return tensor  # small tensors stay inline: shape inference (ONNX Runtime's too) reads them
            header = copied(tensor, leave_out=("raw_data", "external_data", "data_location"))
            _refer(header, location, data.tell(), len(raw))
            data.write(raw)
            return header
        referring = copied(model, stored)
    with open(path, "wb") as handle:
        handle.write(referring.SerializeToString())


def save_model(model: onnx.ModelProto, path: Union[str, os.PathLike], external_data: Optional[bool] = None,
               base_dir: Optional[Path] = None) -> None:
    """Write atomically (``atomic.staged_output``). ``external_data=None`` writes one file unless the
    model is over 2 GiB or holds references to files under ``base_dir``; external data goes to
    ``<name>.data`` beside the model, references copied into it tensor by tensor (``external_data=False``
    reads them into the model first)."""
    if external_data is None:
        external_data = is_large(model) or has_external_data(model)
    if not external_data:
        load_references(model, base_dir)
    with staged_output(path) as staged:
        if external_data:
            _write_external(model, staged, base_dir)
        else:
            onnx.save_model(model, str(staged))
    logger.info("wrote %s%s", path, " (+ external data)" if external_data else "")


@contextmanager
def model_source(model: ModelLike, base_dir: Optional[Path] = None) -> Iterator[Union[bytes, str]]:
    """What ONNX Runtime takes: a model file's path as it is, the bytes of a ModelProto, or a temporary path
    with external data for a ModelProto over ``MAPPED_BYTES`` or holding references to files under
    ``base_dir`` (ONNX Runtime maps external data where it copies bytes: building a session of a 132 MiB
    model from its bytes peaked 396 MiB above them, from a file with external data 220 MiB)."""
    if not isinstance(model, onnx.ModelProto):
        yield str(model)
        return
    if not is_large(model, MAPPED_BYTES) and not has_external_data(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnx-decomp-") as folder:
        path = Path(folder) / "model.onnx"
        _write_external(model, path, base_dir)
        yield str(path)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker's full check with strict shape inference (``_full_check``); InvalidModelError on failure."""
    try:
        _full_check(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise InvalidModelError(f"rewritten model fails onnx.checker: {error}") from None
