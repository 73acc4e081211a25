"""Read legacy (non-zip) PyTorch ``.pth`` state dicts with the standard library and numpy alone.

Layout of a legacy file (``torch.save(..., _use_new_zipfile_serialization=False)``): three pickles
(magic number, protocol version, system info), the pickled object whose tensors refer to their
storage by key, a pickled list of storage keys, then per key an int64 element count and the raw
little-endian data.

Unpickling runs code named by the file, so ``_RestrictedUnpickler`` resolves only the handful of
globals a state dict needs and refuses everything else.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import UsageError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# bfloat16 has no numpy dtype: read it as uint16 and widen (see _storage_array).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    """A (view of a) storage named in the pickle; its bytes come after the pickles."""

    key: str
    storage_type: _StorageType
    offset: int = 0  # elements into the root storage (legacy storage views)
    numel: int | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UsageError(f"{self._path}: refusing to load checkpoint: it references {module}.{name}, "
                         f"which a plain state dict never needs")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UsageError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        storage_type, key, view_metadata = pid[1], str(pid[2]), pid[5] if len(pid) == 6 else None
        if view_metadata is not None:
            # Legacy storage view: (view_key, offset, size) into the root storage ``key``.
            _view_key, offset, numel = view_metadata
            return _StorageRef(key, storage_type, int(offset), int(numel))
        return _StorageRef(key, storage_type)


def _storage_array(raw: np.ndarray, storage_type: _StorageType) -> np.ndarray:
    if storage_type.name == "BFloat16Storage":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw


def _materialise(tensor: _TensorRef, storages: dict[str, np.ndarray], path: Path) -> np.ndarray:
    ref = tensor.storage
    if ref.key not in storages:
        raise UsageError(f"{path}: tensor refers to missing storage {ref.key}")
    flat = storages[ref.key][ref.offset:]
    if ref.numel is not None:
        flat = flat[:ref.numel]
    start = tensor.storage_offset
    # The furthest element the (size, stride) view touches must lie inside the storage.
    extent = 1 + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride)) if all(tensor.size) else 0
    if start < 0 or start + extent > flat.size or any(s < 0 for s in tensor.stride):
        raise UsageError(f"{path}: tensor view out of bounds of its storage {ref.key}")
    base = flat[start:]
    view = np.lib.stride_tricks.as_strided(
        base, shape=tensor.size, strides=tuple(s * base.itemsize for s in tensor.stride), writeable=False)
    # Own the data: callers may keep a tensor after the storage buffer goes.
    return _storage_array(np.array(view, copy=True), ref.storage_type)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy ``.pth`` state dict as ``{name: ndarray}`` in the file's order, without torch."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise UsageError(f"{path}: zip-format PyTorch checkpoints are not supported; re-save with "
                         f"torch.save(..., _use_new_zipfile_serialization=False)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None

    stream = io.BytesIO(data)

    def next_pickle() -> Any:
        return _RestrictedUnpickler(stream, path).load()

    try:
        if next_pickle() != MAGIC_NUMBER:
            raise UsageError(f"{path}: not a legacy PyTorch checkpoint (bad magic number)")
        if next_pickle() != PROTOCOL_VERSION:
            raise UsageError(f"{path}: unsupported PyTorch checkpoint protocol version")
        sys_info = next_pickle()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise UsageError(f"{path}: big-endian PyTorch checkpoints are not supported")
        obj = next_pickle()
        keys = next_pickle()
    except UsageError:
        raise
    except Exception as exc:  # truncated or corrupt pickle streams raise many kinds
        raise UsageError(f"{path}: corrupt PyTorch checkpoint ({exc.__class__.__name__}: {exc})") from None

    if not isinstance(obj, dict):
        raise UsageError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict")
    if not isinstance(keys, list):
        raise UsageError(f"{path}: corrupt PyTorch checkpoint (storage key list missing)")

    types: dict[str, _StorageType] = {}
    for value in obj.values():
        if isinstance(value, _TensorRef):
            types.setdefault(value.storage.key, value.storage.storage_type)

    storages: dict[str, np.ndarray] = {}
    pos = stream.tell()
    for key in keys:
        key = str(key)
        if pos + 8 > len(data):
            raise UsageError(f"{path}: checkpoint truncated in storage {key}")
        numel = int(np.frombuffer(data, "<i8", 1, pos)[0])
        pos += 8
        # An unreferenced storage still occupies bytes; its element size is unknown, so stop there.
        if key not in types:
            raise UsageError(f"{path}: storage {key} is listed but no tensor uses it")
        dtype = types[key].dtype
        nbytes = numel * dtype.itemsize
        if numel < 0 or pos + nbytes > len(data):
            raise UsageError(f"{path}: checkpoint truncated in storage {key}")
        storages[key] = np.frombuffer(data, dtype, numel, pos)
        pos += nbytes

    result: dict[str, np.ndarray] = collections.OrderedDict()
    for name, value in obj.items():
        if isinstance(value, _TensorRef):
            result[str(name)] = _materialise(value, storages, path)
        else:
            raise UsageError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    return result


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise ``UsageError`` unless the file's sha256 is ``expected`` (hex)."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise UsageError(f"{path}: sha256 mismatch (expected {expected.lower()[:16]}..., got {actual[:16]}...)")
