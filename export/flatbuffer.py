"""Read a .tflite flatbuffer without TensorFlow: its operators, tensors and their types.

Uses the TFLite schema bindings that ship with ethos-u-vela (``ethosu.vela.tflite``), so
``ran vela`` can check a file before compiling it without importing TensorFlow.
"""

from __future__ import annotations

import collections
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ran_keras.export.errors import FloatTensorError, TFLiteFileError, VelaNotInstalledError

#: tensor types that make an "int8" model not fully integer
FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def _schema():
    try:
        from ethosu.vela.tflite import BuiltinOperator, Model, TensorType
    except ImportError as err:
        raise VelaNotInstalledError(f"reading .tflite files uses its TFLite schema: {err}") from None
    return Model.Model, BuiltinOperator.BuiltinOperator, TensorType.TensorType


def _names(cls) -> Dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: Tuple[int, ...]
    scale: Optional[float] = None
    zero_point: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class OpInfo:
    index: int
    op: str
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]


@dataclass
class TFLiteInfo:
    """What a .tflite file holds (first subgraph is the model; others are counted)."""
    size_bytes: int
    sha256: str
    ops: List[OpInfo] = field(default_factory=list)
    tensors: List[TensorInfo] = field(default_factory=list)
    inputs: List[TensorInfo] = field(default_factory=list)
    outputs: List[TensorInfo] = field(default_factory=list)
    subgraphs: int = 1

    @property
    def op_counts(self) -> Dict[str, int]:
        """Operator name -> count, in order of first appearance."""
        return dict(collections.Counter(o.op for o in self.ops))

    @property
    def float_tensors(self) -> List[TensorInfo]:
        return [t for t in self.tensors if t.dtype in FLOAT_TYPES]

    @property
    def is_integer_only(self) -> bool:
        return not self.float_tensors

    def producer(self, tensor_index: int) -> Optional[OpInfo]:
        for op in self.ops:
            if tensor_index in op.outputs:
                return op
        return None

    def to_dict(self) -> Dict[str, Any]:
        return {"size_bytes": self.size_bytes, "sha256": self.sha256, "subgraphs": self.subgraphs,
                "op_count": len(self.ops), "ops": self.op_counts,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "float_tensors": [t.name for t in self.float_tensors]}


def read_bytes(path_or_bytes: Union[bytes, bytearray, str, os.PathLike]) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return bytes(path_or_bytes)
    path = Path(path_or_bytes)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite file {str(path)!r} does not exist")
    return path.read_bytes()


def inspect_tflite(path_or_bytes: Union[bytes, bytearray, str, os.PathLike],
                   name: Optional[str] = None) -> TFLiteInfo:
    """Parse a TFLite flatbuffer: ops in execution order, tensors with type, shape and quantisation.
    ``name`` is what errors call it (default: the path, or "the given bytes")."""
    data = read_bytes(path_or_bytes)
    where = name or (path_or_bytes if not isinstance(path_or_bytes, (bytes, bytearray)) else "the given bytes")
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteFileError(f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        return _parse(data)
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise TFLiteFileError(f"{where}: truncated or damaged TFLite flatbuffer ({len(data):,} bytes; reading it "
                              f"failed: {err}); expected a complete .tflite file (export it again)") from None


def _parse(data: bytes) -> TFLiteInfo:
    Model, BuiltinOperator, TensorType = _schema()
    op_names, type_names = _names(BuiltinOperator), _names(TensorType)
    model = Model.GetRootAs(data, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(f"CUSTOM:{custom.decode()}" if custom else op_names.get(builtin, f"BUILTIN_{builtin}"))
    info = TFLiteInfo(len(data), hashlib.sha256(data).hexdigest(), subgraphs=model.SubgraphsLength())
    if model.SubgraphsLength() < 1:
        raise TFLiteFileError("the TFLite model has no subgraph")
    graph = model.Subgraphs(0)
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        q = t.Quantization()
        scale = zero = None
        if q is not None and q.ScaleLength() > 0:
            scale, zero = float(q.Scale(0)), int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
        info.tensors.append(TensorInfo(i, t.Name().decode(errors="replace"), type_names.get(t.Type(), str(t.Type())),
                                       tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else (),
                                       scale, zero))
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        ins = tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else ()
        outs = tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        info.ops.append(OpInfo(i, codes[op.OpcodeIndex()], ins, outs))
    _check_buffers(model, len(data))
    info.inputs = [info.tensors[int(j)] for j in graph.InputsAsNumpy()] if graph.InputsLength() else []
    info.outputs = [info.tensors[int(j)] for j in graph.OutputsAsNumpy()] if graph.OutputsLength() else []
    return info


def _check_buffers(model, size: int) -> None:
    """Every weight buffer lies inside the file (a cut-off file fails here, not in the interpreter)."""
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            buf.DataAsNumpy()  # ValueError when the data runs past the end
        if buf.Offset() > 1 and buf.Offset() + buf.Size() > size:
            raise ValueError(f"buffer {i} ends at byte {buf.Offset() + buf.Size():,}")


def check_integer_only(info: TFLiteInfo, what: str = "the int8 export") -> None:
    """Raise FloatTensorError naming the float tensors (and the ops that make them)."""
    floats = info.float_tensors
    if not floats:
        return
    producers = sorted({(info.producer(t.index).op if info.producer(t.index) else "input/constant")
                        for t in floats})
    names = ", ".join(t.name for t in floats[:5]) + (f" and {len(floats) - 5} more" if len(floats) > 5 else "")
    raise FloatTensorError(
        f"{what} has {len(floats)} float tensor(s) ({names}), made by: {', '.join(producers)}. "
        "Every tensor must be int8/int32 for Ethos-U; a layer TFLite cannot quantise (or a float "
        "model) leaves these behind.")
