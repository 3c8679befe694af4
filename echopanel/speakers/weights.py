"""The speaker encoder's weights: the packaged ``.npz`` the runtime loads, and the reader of the original checkpoint.

The package ships ``echopanel/speakers/data/ge2e.npz``: exactly the arrays ``ENCODER_ARRAYS`` names, float32, made
once from resemblyzer's ``pretrained.pt`` by ``scripts/convert_speaker_weights.py`` (licence and notice beside it).
``load_encoder_arrays`` reads it with numpy alone (no pickle) and checks every name, shape and dtype.

The original is a legacy (non-zip) torch checkpoint, read here with plain Python: no torch, and no code run from the
file.

A legacy ``torch.save`` file is five pickles and then raw bytes: magic number, protocol version, system info, the
object (tensors refer to storages by persistent id), the list of storage keys, then for each key in that order an
int64 element count followed by the storage's bytes. The object pickle is read with an unpickler that knows only the
few globals a state dict needs, so a crafted file cannot run code.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
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


# The arrays the encoder needs (torch's names, shapes as in the checkpoint): a 3-layer LSTM 40->256, then Linear.
ENCODER_ARRAYS: dict[str, tuple[int, ...]] = {
    **{
        name: shape
        for n in range(3)
        for name, shape in (
            (f"lstm.weight_ih_l{n}", (1024, 40 if n == 0 else 256)),
            (f"lstm.weight_hh_l{n}", (1024, 256)),
            (f"lstm.bias_ih_l{n}", (1024,)),
            (f"lstm.bias_hh_l{n}", (1024,)),
        )
    },
    "linear.weight": (256, 256),
    "linear.bias": (256,),
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


def check_encoder_arrays(arrays: dict[str, np.ndarray], origin: str | Path) -> dict[str, np.ndarray]:
    """``arrays`` if they are exactly ``ENCODER_ARRAYS`` (names, shapes, float32), else ``CheckpointError``."""
    if set(arrays) != set(ENCODER_ARRAYS):
        missing = sorted(set(ENCODER_ARRAYS) - set(arrays))
        extra = sorted(set(arrays) - set(ENCODER_ARRAYS))
        raise CheckpointError(f"{origin}: not the speaker encoder's arrays (missing {missing}, unexpected {extra})")
    for name, shape in ENCODER_ARRAYS.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != np.float32:
            raise CheckpointError(f"{origin}: {name} is {a.dtype}{list(a.shape)}, expected float32{list(shape)}")
    return arrays


def load_encoder_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The encoder's arrays from the packaged ``.npz`` (numpy only, no pickle), checked."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:  # truncated, not a zip, a pickled object inside
        raise CheckpointError(f"{path}: unreadable speaker weights ({exc})") from exc
    return check_encoder_arrays(arrays, path)


def encoder_arrays_of_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The encoder's arrays from resemblyzer's original ``pretrained.pt`` (its ``model_state``), checked."""
    state = load_legacy_checkpoint(path, select="model_state")
    return check_encoder_arrays({name: state[name] for name in ENCODER_ARRAYS if name in state}, path)
