"""Write ``.pth`` files in ``torch.save``'s zip layout without PyTorch: for test fixtures and tools,
never for distributing models.

The layout is the one ``ran_keras.weights.pth`` documents: ``<archive>/data.pkl`` (pickle protocol 2,
tensors as ``torch._utils._rebuild_tensor_v2`` calls whose storages are persistent ids
``('storage', torch.<Type>Storage, key, 'cpu', numel)``), ``<archive>/data/<key>`` (little-endian
bytes, each starting on a 64-byte boundary like torch's), ``byteorder``, ``version``,
``.format_version`` and ``.storage_alignment``. The pickle is emitted opcode by opcode, so writing
needs neither torch nor importable torch names, and only the globals ``torch.load(weights_only=True)``
accepts are used (plus ``argparse.Namespace`` for an ``args`` entry, as training scripts save it).

Values: dicts (``OrderedDict`` is written as one, like state dicts), lists, tuples, str, int, float,
bool, None, numpy arrays (-> contiguous tensors of the same dtype), ``BFloat16(array)`` (-> a bfloat16
tensor), ``StridedTensor`` (a view of a storage shared with other tensors: non-contiguous layouts)
and ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import collections
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ran_keras.fileio import atomic_path
from ran_keras.weights.errors import WeightsError

_STORAGE_NAMES = {"f4": "FloatStorage", "f8": "DoubleStorage", "f2": "HalfStorage", "i8": "LongStorage",
                  "i4": "IntStorage", "i2": "ShortStorage", "i1": "CharStorage", "u1": "ByteStorage",
                  "b1": "BoolStorage", "c8": "ComplexFloatStorage", "c16": "ComplexDoubleStorage"}
ALIGNMENT = 64


@dataclass(frozen=True)
class BFloat16:
    """Write ``array`` (float) as a bfloat16 tensor, rounded to nearest even."""
    array: np.ndarray


@dataclass(frozen=True)
class StridedTensor:
    """A tensor viewing a 1-D ``storage`` at ``offset`` with ``shape`` and ``stride`` (in elements).

    Tensors built on the same ``storage`` object share one storage in the file, as torch views do.
    """
    storage: Any
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]


def write_pth(path, obj: Any, *, archive: Optional[str] = None) -> Path:
    """Write ``obj`` as a ``torch.save`` zip file, atomically; returns the path."""
    path = Path(path)
    emitter = _Emitter()
    pickled = emitter.dump(obj)
    name = archive or (path.stem if re.fullmatch(r"[A-Za-z0-9_.\-]+", path.stem) else "archive")
    entries = [("data.pkl", pickled), (".format_version", b"1"), (".storage_alignment", str(ALIGNMENT).encode()),
               ("byteorder", b"little")]
    entries += [(f"data/{key}", data) for key, data in emitter.storages]
    entries.append(("version", b"3\n"))
    with atomic_path(path) as tmp:
        _write_zip(tmp, [(f"{name}/{entry}", data) for entry, data in entries])
    return path


def _write_zip(path: Path, entries: Sequence[Tuple[str, bytes]]) -> None:
    """An uncompressed zip whose entries' data start on ``ALIGNMENT`` bytes (the 'FB' padding field)."""
    offset = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            if len(data) >= 2 ** 31:
                raise WeightsError(f"{name}: entries of 2 GiB or more are not supported by this writer")
            pad = -(offset + 30 + len(name) + 4) % ALIGNMENT
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            zf.writestr(info, data)
            offset += 30 + len(name) + len(info.extra) + len(data)


class _Emitter:
    """Pickle protocol 2, emitted opcode by opcode for the value types the module doc lists."""

    def __init__(self):
        self.out = bytearray()
        self.storages: List[Tuple[str, bytes]] = []
        self._shared: Dict[int, Tuple[str, str, Any]] = {}  # id(storage) -> (key, type, the object kept alive)

    def dump(self, obj: Any) -> bytes:
        self.out += b"\x80\x02"
        self.value(obj)
        self.out += b"."
        return bytes(self.out)

    def value(self, obj: Any) -> None:
        if obj is None:
            self.out += b"N"
        elif isinstance(obj, bool):
            self.out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, (int, np.integer)):
            self.integer(int(obj))
        elif isinstance(obj, (float, np.floating)):
            self.out += b"G" + struct.pack(">d", float(obj))
        elif isinstance(obj, str):
            self.string(obj)
        elif isinstance(obj, (np.ndarray, BFloat16, StridedTensor)):
            self.tensor(obj)
        elif isinstance(obj, collections.OrderedDict):
            self.global_("collections", "OrderedDict")
            self.out += b")R"
            self.items(obj)
        elif isinstance(obj, dict):
            self.out += b"}"
            self.items(obj)
        elif isinstance(obj, list):
            self.out += b"]"
            if obj:
                self.out += b"("
                for item in obj:
                    self.value(item)
                self.out += b"e"
        elif isinstance(obj, tuple):
            self.tuple(obj)
        elif isinstance(obj, argparse.Namespace):
            self.global_("argparse", "Namespace")
            self.out += b")\x81}"
            self.items(vars(obj))
            self.out += b"b"
        else:
            raise WeightsError(f"cannot write a {type(obj).__name__} into a .pth file "
                               "(arrays, plain containers, scalars, str and argparse.Namespace only)")

    def integer(self, n: int) -> None:
        if 0 <= n < 256:
            self.out += b"K" + bytes([n])
        elif 0 <= n < 65536:
            self.out += b"M" + struct.pack("<H", n)
        elif -2 ** 31 <= n < 2 ** 31:
            self.out += b"J" + struct.pack("<i", n)
        else:
            raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def string(self, text: str) -> None:
        raw = text.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")

    def tuple(self, items: Sequence[Any]) -> None:
        if not items:
            self.out += b")"
            return
        if len(items) > 3:
            self.out += b"("
        for item in items:
            self.value(item)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")

    def items(self, mapping: Mapping[Any, Any]) -> None:
        if not mapping:
            return
        self.out += b"("
        for key, val in mapping.items():
            if not isinstance(key, (str, int)):
                raise WeightsError(f"dict keys must be str or int to be written, got {key!r}")
            self.value(key)
            self.value(val)
        self.out += b"u"

    def tensor(self, obj: Any) -> None:
        """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
        key, stype, numel, offset, shape, stride = self._layout(obj)
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("
        self.string("storage")
        self.global_("torch", stype)
        self.string(key)
        self.string("cpu")
        self.integer(numel)
        self.out += b"tQ"
        self.integer(offset)
        self.tuple(tuple(int(n) for n in shape))
        self.tuple(tuple(int(s) for s in stride))
        self.out += b"\x89"
        self.global_("collections", "OrderedDict")
        self.out += b")RtR"

    def _layout(self, obj: Any):
        if isinstance(obj, StridedTensor):
            key, stype, numel = self._storage(obj.storage, shared=True)
            if len(obj.shape) != len(obj.stride):
                raise WeightsError(f"StridedTensor shape {obj.shape} and stride {obj.stride} differ in length")
            return key, stype, numel, obj.offset, obj.shape, obj.stride
        array = np.asarray(obj.array if isinstance(obj, BFloat16) else obj, order="C")  # keeps 0-d arrays 0-d
        key, stype, numel = self._storage(BFloat16(array) if isinstance(obj, BFloat16) else array, shared=False)
        stride = tuple(s // array.itemsize for s in array.strides) if array.size else (1,) * array.ndim
        return key, stype, numel, 0, array.shape, stride

    def _storage(self, storage: Any, shared: bool) -> Tuple[str, str, int]:
        if shared and id(storage) in self._shared:
            key, stype, _ = self._shared[id(storage)]
            return key, stype, _numel(storage)
        stype, data = _storage_bytes(storage)
        key = str(len(self.storages))
        self.storages.append((key, data))
        if shared:
            self._shared[id(storage)] = (key, stype, storage)
        return key, stype, _numel(storage)


def _numel(storage: Any) -> int:
    return int(np.asarray(storage.array if isinstance(storage, BFloat16) else storage).size)


def _storage_bytes(storage: Any) -> Tuple[str, bytes]:
    """(torch storage class name, little-endian bytes) of a 1-D storage."""
    if isinstance(storage, BFloat16):
        return "BFloat16Storage", bfloat16_bits(storage.array).astype("<u2").tobytes()
    array = np.asarray(storage).reshape(-1)
    code = f"{array.dtype.kind}{array.dtype.itemsize}"
    if code not in _STORAGE_NAMES:
        raise WeightsError(f"no torch storage for numpy dtype {array.dtype}")
    return _STORAGE_NAMES[code], array.astype(array.dtype.newbyteorder("<")).tobytes()


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32).reshape(-1))
    rounded[nan] = 0x7FC0
    return rounded


def adamw_state(params: Mapping[str, np.ndarray], step: int = 1) -> Dict[str, Any]:
    """An ``optimizer.state_dict()`` of AdamW's shape for ``params`` (zero moments): fixture filler."""
    state = {i: {"step": float(step), "exp_avg": np.zeros_like(v, np.float32),
                 "exp_avg_sq": np.zeros_like(v, np.float32)} for i, v in enumerate(params.values())}
    group = {"lr": 4e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05, "amsgrad": False,
             "params": list(range(len(params)))}
    return {"state": state, "param_groups": [group]}


def training_checkpoint(model: Mapping[str, Any], *, model_ema: Optional[Mapping[str, Any]] = None,
                        optimizer: Optional[Mapping[str, Any]] = None, epoch: int = 299,
                        scaler: Optional[Mapping[str, Any]] = None,
                        args: Optional[argparse.Namespace] = None) -> Dict[str, Any]:
    """The dict the ConvNeXt/RAN-i training scripts save: model, optimizer, epoch, scaler, args, model_ema."""
    out: Dict[str, Any] = {
        "model": collections.OrderedDict(model),
        "optimizer": optimizer if optimizer is not None else adamw_state(model),
        "epoch": epoch,
        "scaler": scaler if scaler is not None else {"scale": 65536.0, "growth_factor": 2.0,
                                                     "backoff_factor": 0.5, "growth_interval": 2000,
                                                     "_growth_tracker": 0},
        "args": args if args is not None else argparse.Namespace(model="convnext_tiny", lr=4e-3, epochs=300),
    }
    if model_ema is not None:
        out["model_ema"] = collections.OrderedDict(model_ema)
    return out


__all__ = ["write_pth", "BFloat16", "StridedTensor", "bfloat16_bits", "adamw_state", "training_checkpoint",
           "ALIGNMENT"]
