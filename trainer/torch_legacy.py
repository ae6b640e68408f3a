"""Read a PyTorch state_dict saved in the legacy (non-zip) pickle format, without PyTorch.

The EfficientNet-Lite0 ImageNet weights we can obtain offline ship in that format. Reading them here keeps
torch out of the trainer's dependencies. Layout of the legacy format: five pickles in a row (magic number,
protocol version, system info, the object with storages referenced by key, the list of storage keys), then for
each key its raw data preceded by an int64 element count.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pneumo_desktop.core.errors import PneumoError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(PneumoError, ValueError):
    """The file is not a legacy PyTorch state_dict this reader understands."""


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.shape, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.array(view, copy=True)


def _rebuild_tensor(storage: _StorageRef, offset: int, shape: tuple, stride: tuple, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Resolves only the handful of torch names a state_dict uses; anything else is refused (no code runs)."""

    def __init__(self, handle: BinaryIO, storages: dict[str, _StorageRef]) -> None:
        super().__init__(handle)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise TorchFileError(f"unsupported object in checkpoint: {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise TorchFileError(f"unsupported persistent id {kind!r}")
        if key not in self._storages:
            self._storages[key] = _StorageRef(key, storage_type, int(numel))
        return self._storages[key]


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Return {parameter name: numpy array} from a legacy-format .pth file."""
    storages: dict[str, _StorageRef] = {}
    with open(path, "rb") as handle:
        try:
            magic = pickle.load(handle)
        except Exception as exc:  # any unpickling failure means "not this format"
            raise TorchFileError(f"{path} is not a legacy PyTorch file") from exc
        if magic != LEGACY_MAGIC:
            raise TorchFileError(f"{path}: wrong magic number (zip-format checkpoints are not supported)")
        pickle.load(handle)  # protocol version
        pickle.load(handle)  # system info (endianness, type sizes)
        obj = _Unpickler(handle, storages).load()
        keys = pickle.load(handle)
        for key in keys:
            (count,) = struct.unpack("<q", handle.read(8))
            ref = storages[key]
            raw = handle.read(count * ref.dtype.itemsize)
            if len(raw) != count * ref.dtype.itemsize:
                raise TorchFileError(f"{path} is truncated (storage {key})")
            ref.data = np.frombuffer(raw, dtype=ref.dtype)
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path} does not hold a state_dict")
    return {name: tensor.to_numpy() for name, tensor in obj.items() if isinstance(tensor, _TensorRef)}
