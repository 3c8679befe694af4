"""Read a legacy (non-zip) torch checkpoint with plain Python: no torch, and no code run from the file.

A legacy ``torch.save`` file is five pickles and then raw bytes: magic number, protocol version, system info, the
object (tensors refer to storages by persistent id), the list of storage keys, then for each key in that order an
int64 element count followed by the storage's bytes. The object pickle is read with an unpickler that knows only the
few globals a state dict needs, so a crafted file cannot run code.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """The file is not a legacy torch checkpoint this reader understands."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_rest: object
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which this reader does not allow")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unexpected storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views are not supported")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _materialise(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _TensorRef):
        flat = storages[obj.storage.key]
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :], shape=obj.size, strides=tuple(s * item for s in obj.stride), writeable=False
        )
        return np.array(view)  # own, contiguous copy
    if isinstance(obj, dict):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _tensor_refs(obj: Any) -> list[_TensorRef]:
    if isinstance(obj, _TensorRef):
        return [obj]
    if isinstance(obj, dict):
        return [r for v in obj.values() for r in _tensor_refs(v)]
    if isinstance(obj, list | tuple):
        return [r for v in obj for r in _tensor_refs(v)]
    return []


def _read_storages(
    f: IO[bytes], keys: list[str], known: dict[str, _StorageRef], keep: set[str]
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in keys:
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError("checkpoint ends before all storages")
        (numel,) = struct.unpack("<q", header)
        ref = known.get(key)
        if ref is None:  # its element size, so its length, is unknown
            raise CheckpointError(f"storage {key} is not referenced by the checkpoint object")
        if numel != ref.numel:
            raise CheckpointError(f"storage {key}: {numel} elements on disk, {ref.numel} expected")
        nbytes = numel * ref.dtype.itemsize
        if key not in keep:
            f.seek(nbytes, 1)
            continue
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise CheckpointError(f"storage {key} is truncated")
        out[key] = np.frombuffer(data, dtype=ref.dtype)
    return out


def load_legacy_checkpoint(path: str | Path, select: str | None = None) -> Any:
    """The object saved in a legacy torch checkpoint, with every tensor as a numpy array.

    ``select`` names one top-level key (e.g. ``"model_state"``): only that entry is returned and only the storages
    it uses are kept in memory.
    """
    with open(path, "rb") as f:
        if _Unpickler(f).load() != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a legacy torch checkpoint (zip checkpoints are not supported)")
        if _Unpickler(f).load() != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported checkpoint protocol")
        sys_info = _Unpickler(f).load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        obj = _Unpickler(f).load()
        keys = _Unpickler(f).load()
        if not isinstance(keys, list):
            raise CheckpointError(f"{path}: malformed storage key list")
        known = {r.storage.key: r.storage for r in _tensor_refs(obj)}
        if select is not None:
            if not isinstance(obj, dict) or select not in obj:
                raise CheckpointError(f"{path}: no entry {select!r}")
            obj = obj[select]
        keep = {r.storage.key for r in _tensor_refs(obj)}
        storages = _read_storages(f, [str(k) for k in keys], known, keep)
    return _materialise(obj, storages)
