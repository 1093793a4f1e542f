"""Read ``torch.save`` checkpoints (``.pth``) without PyTorch, executing nothing from the file.

**Format** (PyTorch >= 1.6, the zip format): an uncompressed zip whose entries share one top-level
folder, the archive name (the file's stem when torch wrote it, any name when read):

* ``<archive>/data.pkl``: the saved object, pickled with protocol 2. A tensor is the call
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``;
  an ``nn.Parameter`` wraps one in ``torch._utils._rebuild_parameter(tensor, requires_grad, hooks)``.
  Storages are pickle *persistent ids*, ``('storage', torch.<Type>Storage, key, location, numel)``.
* ``<archive>/data/<key>``: each storage's raw bytes (torch pads the zip so they start on 64 bytes).
* ``<archive>/byteorder`` (``little``/``big``; missing in old files, meaning little),
  ``<archive>/version`` (``3``); newer torch adds ``.format_version``, ``.storage_alignment`` and
  ``.data/serialization_id``, which reading does not need.

**Safety**: the unpickler's ``find_class`` resolves only the names rebuilding needs (the tensor and
parameter rebuild functions, the typed storage classes, ``torch`` dtypes, ``torch.Size``,
``collections.OrderedDict``, and ``collections.Counter`` for LR-scheduler milestones) to our own
implementations, and a short list of harmless classes (``argparse.Namespace``, ``pathlib`` paths,
``torch.device``) to inert ``Inert`` records of their arguments and state. Any other global
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, an unknown class) raises ``WeightsError``
naming it and the file, before anything is called.

**Memory**: the pickle is small; storages are read lazily, each once, when a tensor refers to it.
With ``mmap=True`` (the default) an uncompressed storage is a read-only view of a memory map of the
file, so an 850 MB checkpoint costs only the pages actually used; ``mmap=False`` reads each storage
once into its own array. Tensors come back as numpy arrays with torch's dtype, shape and strides
(views of their storage, read-only; ``np.array(t)`` copies). bfloat16 has no numpy dtype: those
tensors are converted to float32 (exact) and the conversion is listed in ``PthCheckpoint.notes``.

**Legacy format** (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``): five pickles in a
row (magic number, protocol version 1001, system info, the object, the list of storage keys), then
each storage as an 8-byte element count and its raw bytes. Read with the same allowlist; storages
are filled after the object is unpickled (tensors are views of them), so the whole file is read
into memory. Little-endian files only. TorchScript archives and tar-format files (PyTorch < 0.4) are
refused with a message that says what the file is.
"""

from __future__ import annotations

import collections
import mmap as _mmap
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ran_keras.weights.errors import WeightsError

#: torch typed storage class -> numpy dtype of its elements (bfloat16 is read as its uint16 bits)
STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "u2",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "c8", "ComplexDoubleStorage": "c16",
}

#: ``torch.<name>`` dtype objects a pickle may reference, with the numpy dtype they stand for
TORCH_DTYPES = {
    "float32": "f4", "float": "f4", "float64": "f8", "double": "f8", "float16": "f2", "half": "f2",
    "bfloat16": "f4", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4", "int16": "i2",
    "short": "i2", "int8": "i1", "uint8": "u1", "bool": "?", "complex64": "c8", "complex128": "c16",
}

#: classes that are harmless to represent as inert data (never instantiated)
HARMLESS = frozenset({
    ("argparse", "Namespace"), ("pathlib", "Path"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"), ("torch", "device"),
})

_BF16_NOTE = "bfloat16 tensors were converted to float32 (exactly: bf16 is the top half of a float32)"
_LEGACY_PICKLE = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # the pickled magic number of legacy files


class Inert:
    """A harmless pickled object kept as data: its class name, call arguments and state; never run.

    ``argparse.Namespace`` (the ``args`` entry of training checkpoints) becomes one of these;
    ``ns.lr`` and ``ns.as_dict()`` read its fields.
    """

    module = ""
    name = ""
    args: Tuple[Any, ...] = ()
    state: Any = None

    def __init__(self, *args: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __getattr__(self, key: str) -> Any:
        state = self.__dict__.get("state")
        if isinstance(state, dict) and key in state:
            return state[key]
        raise AttributeError(f"{self.module}.{self.name} record has no field {key!r}")

    def as_dict(self) -> Dict[str, Any]:
        """The object's attributes (its pickled state) as a plain dict."""
        return dict(self.state) if isinstance(self.state, dict) else {}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) or ", ".join(map(repr, self.args))
        return f"Inert[{self.module}.{self.name}]({inner})"


@dataclass(frozen=True)
class StorageType:
    """A ``torch.<Type>Storage`` class named by the pickle."""
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclass(frozen=True)
class TorchDtype:
    """A ``torch.<dtype>`` object named by the pickle (kept as data)."""
    name: str

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(TORCH_DTYPES[self.name])


@dataclass(frozen=True)
class _Storage:
    key: str
    type: StorageType
    array: np.ndarray  # 1-D, the storage's elements


@dataclass
class PthCheckpoint:
    """What ``read_pth`` returns: the unpickled object and how it was read."""
    path: Path
    data: Any
    archive: str
    version: str
    byteorder: str
    storages: int
    notes: List[str] = field(default_factory=list)


def read_pth(path, *, mmap: bool = True) -> PthCheckpoint:
    """Read a ``torch.save`` checkpoint safely; tensors become numpy arrays (see the module doc)."""
    path = Path(path)
    if _file_format(path) == "legacy":
        legacy = _Legacy(path)
        data = legacy.load()
        return PthCheckpoint(path, data, "", "legacy", "little", len(legacy.storages), legacy.notes)
    with _Archive(path, mmap) as archive:
        data = archive.unpickle()
        return PthCheckpoint(path, data, archive.prefix, archive.version, archive.byteorder,
                             len(archive.storages), archive.notes)


def _file_format(path: Path) -> str:
    """'zip' or 'legacy'; WeightsError for anything else."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return "zip"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_LEGACY_PICKLE):
        return "legacy"
    if head[257:262] == b"ustar":
        raise WeightsError(f"{path}: a tar-format torch.save file (PyTorch < 0.4); not supported")
    raise WeightsError(f"{path}: not a torch.save checkpoint (neither a zip archive nor the legacy format)")


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals and persistent ids all go through the archive's allowlist."""

    def __init__(self, stream, archive: "_Archive"):
        super().__init__(stream)
        self._archive = archive

    def find_class(self, module: str, name: str) -> Any:
        return self._archive.resolve_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return self._archive.storage(pid)


class _Reader:
    """What both formats share: the allowlist of globals and the tensor rebuild over storages."""

    path: Path
    notes: List[str]
    storages: Dict[str, _Storage]

    def _unpickle(self, stream, what: str) -> Any:
        try:
            return _Unpickler(stream, self).load()
        except WeightsError:
            raise
        except Exception as err:  # malformed pickle: report it as a bad weights file
            raise WeightsError(f"{self.path}: {what} could not be read: {type(err).__name__}: {err}") from err

    def _check_pid(self, pid: Any, length: int) -> Tuple[StorageType, str, int]:
        if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
            raise WeightsError(f"{self.path}: unexpected persistent id {pid!r} (expected a storage)")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise WeightsError(f"{self.path}: malformed storage reference {pid!r}")
        cached = self.storages.get(key)
        if cached is not None and (cached.type != stype or len(cached.array) < numel):
            raise WeightsError(f"{self.path}: storage {key} is referenced as {cached.type.name} and "
                               f"{stype.name}, or with different sizes")
        return stype, key, int(numel)

    # -- the allowlist -------------------------------------------------------------------------------------

    def resolve_global(self, module: str, name: str) -> Any:
        """The stand-in for an allowed global; ``WeightsError`` for anything else."""
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("collections", "Counter"):  # MultiStepLR's milestones (detector checkpoints)
            return _counter
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self.rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return TorchDtype(name)
        if (module, name) == ("torch", "Size"):
            return _torch_size
        if (module, name) in HARMLESS:
            return type(f"Inert_{name}", (Inert,), {"module": module, "name": name})
        raise WeightsError(f"{self.path}: refused to unpickle {module}.{name}: only tensors, storages, "
                           "plain containers and known-harmless records are allowed in a weights file")

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> np.ndarray:
        """torch's ``_rebuild_tensor_v2``: a (strided) view of the storage, checked to stay inside it."""
        if not isinstance(storage, _Storage):
            raise WeightsError(f"{self.path}: a tensor without a storage ({type(storage).__name__})")
        size, stride = _int_tuple(size, "size", self.path), _int_tuple(stride, "stride", self.path)
        if not _is_int(offset) or offset < 0 or len(size) != len(stride) or min(size + stride, default=0) < 0:
            raise WeightsError(f"{self.path}: malformed tensor (offset {offset!r}, size {size}, stride {stride})")
        base = storage.array
        if 0 in size:
            view = np.zeros(size, base.dtype)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= len(base):
                raise WeightsError(f"{self.path}: tensor of size {size} reaches element {last} of storage "
                                   f"{storage.key}, which has {len(base)}")
            view = np.lib.stride_tricks.as_strided(base[offset:], shape=size,
                                                   strides=[s * base.itemsize for s in stride], writeable=False)
        return self._native(view, storage.type)

    def _native(self, view: np.ndarray, stype: StorageType) -> np.ndarray:
        if stype.name == "BFloat16Storage":
            if _BF16_NOTE not in self.notes:
                self.notes.append(_BF16_NOTE)
            return (view.astype(np.uint32) << 16).view(np.float32)
        if not view.dtype.isnative:
            note = "big-endian storages were byte-swapped to native order"
            if note not in self.notes:
                self.notes.append(note)
            return view.astype(view.dtype.newbyteorder("="))
        return view


class _Legacy(_Reader):
    """A legacy-format file: five pickles, then the storages' bytes (filled into the arrays tensors view)."""

    MAGIC = 0x1950A86A20F9469CFC6C
    PROTOCOL = 1001

    def __init__(self, path: Path):
        self.path = path
        self.notes: List[str] = []
        self.storages: Dict[str, _Storage] = {}

    def storage(self, pid: Any) -> _Storage:
        """An empty storage of the right size, filled from the file once the object is unpickled."""
        stype, key, numel = self._check_pid(pid, 6)
        if pid[5] is not None:
            raise WeightsError(f"{self.path}: legacy storage views are not supported ({pid!r})")
        if stype.name == "BFloat16Storage":
            raise WeightsError(f"{self.path}: bfloat16 storages in the legacy format are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(key, stype, np.zeros(numel, stype.dtype.newbyteorder("<")))
        return self.storages[key]

    def load(self) -> Any:
        with open(self.path, "rb") as f:
            if self._unpickle(f, "the magic number") != self.MAGIC:
                raise WeightsError(f"{self.path}: not a legacy torch.save file (wrong magic number)")
            if self._unpickle(f, "the protocol version") != self.PROTOCOL:
                raise WeightsError(f"{self.path}: unknown legacy torch.save protocol version")
            info = self._unpickle(f, "the system info")
            if not (isinstance(info, dict) and info.get("little_endian", True)):
                raise WeightsError(f"{self.path}: a big-endian legacy file; not supported")
            data = self._unpickle(f, "the saved object")
            keys = self._unpickle(f, "the storage list")
            if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                raise WeightsError(f"{self.path}: malformed storage list")
            for key in keys:
                self._fill(f, key)
        return data

    def _fill(self, f, key: str) -> None:
        storage = self.storages.get(key)
        if storage is None:
            raise WeightsError(f"{self.path}: storage {key} is stored but no tensor uses it")
        count = f.read(8)
        if len(count) != 8:
            raise WeightsError(f"{self.path}: storage {key} is truncated")
        numel = struct.unpack("<q", count)[0]
        array = storage.array
        if numel != len(array):
            raise WeightsError(f"{self.path}: storage {key} holds {numel} elements, {len(array)} expected")
        raw = f.read(array.nbytes)
        if len(raw) != array.nbytes:
            raise WeightsError(f"{self.path}: storage {key} is truncated")
        array[:] = np.frombuffer(raw, array.dtype)


class _Archive(_Reader):
    """One open ``.pth`` zip: its layout, its storages (read lazily, cached by key) and the allowlist."""

    def __init__(self, path: Path, mmap: bool):
        self.path = path
        self.notes: List[str] = []
        self.storages: Dict[str, _Storage] = {}
        self._file = open(path, "rb")
        self._zip = zipfile.ZipFile(self._file)
        self._map = _mmap.mmap(self._file.fileno(), 0, access=_mmap.ACCESS_READ) if mmap else None
        self.prefix = self._find_prefix()
        self.byteorder = self._text("byteorder", "little")
        self.version = self._text("version", "")
        if self.byteorder not in ("little", "big"):
            raise WeightsError(f"{path}: unknown byteorder {self.byteorder!r}")

    def __enter__(self) -> "_Archive":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()
        self._file.close()  # a memory map stays valid after its file is closed

    def _find_prefix(self) -> str:
        names = self._zip.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                raise WeightsError(f"{self.path}: a TorchScript archive (torch.jit.save), not a torch.save "
                                   "checkpoint; export its state_dict() with torch.save instead")
            raise WeightsError(f"{self.path}: a zip file but not a torch.save checkpoint "
                               f"(expected one '<archive>/data.pkl', found {len(pickles)})")
        return pickles[0][: -len("/data.pkl")]

    def _text(self, name: str, default: str) -> str:
        try:
            return self._zip.read(f"{self.prefix}/{name}").decode("ascii", "replace").strip()
        except KeyError:
            return default

    def unpickle(self) -> Any:
        with self._zip.open(f"{self.prefix}/data.pkl") as stream:
            return self._unpickle(stream, "data.pkl")

    def storage(self, pid: Any) -> _Storage:
        """The storage a persistent id names, read on first use and cached by key."""
        stype, key, numel = self._check_pid(pid, 5)
        if key not in self.storages:
            self.storages[key] = _Storage(key, stype, self._read(key, stype.dtype, numel))
        return self.storages[key]

    def _read(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"{self.prefix}/data/{key}"
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise WeightsError(f"{self.path}: storage {key} has no entry {name}") from None
        dtype = dtype.newbyteorder("<" if self.byteorder == "little" else ">")
        if info.file_size < numel * dtype.itemsize:
            raise WeightsError(f"{self.path}: {name} holds {info.file_size} bytes, "
                               f"{numel} x {dtype.itemsize} expected")
        if info.compress_type != zipfile.ZIP_STORED:
            return np.frombuffer(self._zip.read(name), dtype, count=numel)
        offset = self._data_offset(info)
        if self._map is not None:
            return np.frombuffer(self._map, dtype, count=numel, offset=offset)
        array = np.empty(numel, dtype)
        self._file.seek(offset)
        if self._file.readinto(memoryview(array.view(np.uint8))) != array.nbytes:
            raise WeightsError(f"{self.path}: {name} is truncated")
        return array

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where an uncompressed entry's bytes start: after its local header (whose extra field torch pads)."""
        self._file.seek(info.header_offset)
        header = self._file.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise WeightsError(f"{self.path}: bad zip local header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len

def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    """``nn.Parameter`` -> its tensor (gradient flags and hooks carry no weights)."""
    if not isinstance(data, np.ndarray):
        raise WeightsError(f"a parameter without a tensor ({type(data).__name__})")
    return data


def _counter(items: Any = None) -> collections.Counter:
    """``collections.Counter`` from a dict of plain keys and int counts only."""
    if items is not None and not (isinstance(items, dict) and all(_is_int(v) for v in items.values())):
        raise WeightsError(f"a Counter must be built from a dict of counts, got {type(items).__name__}")
    return collections.Counter(items or {})


def _torch_size(dims: Any = ()) -> Tuple[int, ...]:
    """``torch.Size`` -> a tuple of ints."""
    return _int_tuple(dims, "torch.Size", "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str, path) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise WeightsError(f"{path}: tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def flatten_arrays(obj: Any, prefix: str = "") -> Dict[str, np.ndarray]:
    """Every array in nested dicts/lists as ``{'a.b.0': array}`` (for listing or hashing contents)."""
    out: Dict[str, np.ndarray] = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            out[name] = value
        else:
            out.update(flatten_arrays(value, name + "."))
    return out


def describe(checkpoint: PthCheckpoint) -> str:
    """A short listing: top-level entries, their kinds and tensor counts (for humans and error messages)."""
    lines = [f"{checkpoint.path} (archive {checkpoint.archive!r}, version {checkpoint.version or '?'}, "
             f"{checkpoint.storages} storages)"]
    data = checkpoint.data if isinstance(checkpoint.data, dict) else {"<object>": checkpoint.data}
    for key, value in data.items():
        arrays = flatten_arrays(value) if not isinstance(value, np.ndarray) else {"": value}
        kind = type(value).__name__ if not isinstance(value, Inert) else f"{value.module}.{value.name}"
        extra = f", {len(arrays)} tensors, {sum(a.size for a in arrays.values()):,} values" if arrays else ""
        lines.append(f"  {key}: {kind}{extra}")
    return "\n".join(lines + [f"  note: {n}" for n in checkpoint.notes])


__all__ = ["read_pth", "PthCheckpoint", "Inert", "StorageType", "TorchDtype", "flatten_arrays", "describe",
           "STORAGE_DTYPES", "TORCH_DTYPES", "HARMLESS"]
