"""``NetworkSpec`` and ``BlockSpec``: architectures as validated, JSON round-trippable data.

A ``NetworkSpec`` is a stem, a list of stages (each a list of ``BlockSpec``), a head and a
classifier, plus network-wide settings (default activation, BN constants, input normalisation).
Input channels of every block are inferred from the block before it. Block fields and their
defaults are declared per kind in ``ran_keras.blocks``.

Everything here is pure Python: specs are built, validated, transformed and profiled without
importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ran_keras import activations, blocks, fileio
from ran_keras.errors import InputShapeError, SpecError, close_matches

#: ImageNet's per-channel pixel mean and std on 0-255 pixels (torchvision's, times 255)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: the paddings a network's convolutions and poolings follow (see ``ran_keras.ir.PADDINGS``)
PADDING_CONVENTIONS = ("same", "symmetric")

#: how the builder initialises conv/depthwise/dense kernels (biases start at 0 either way):
#: 'he_fan_out': He (variance 2 / fan-out, truncated normal) for convs, VarianceScaling(1/3, fan-out,
#: uniform) for the classifier; 'trunc_normal_0.02': ConvNeXt's N(0, 0.02) on every kernel
#: (timm's trunc_normal_ cuts at +-2 absolute, i.e. at 100 std: a plain normal in practice)
WEIGHT_INITS = ("he_fan_out", "trunc_normal_0.02")

SPEC_FORMAT = "ran-keras-spec"
SPEC_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class BlockSpec:
    """One block: a kind plus that kind's fields, all resolved (defaults filled in).

    Fields are read as attributes (``block.channels``); a field a kind does not have reads as
    AttributeError. ``activation`` None means "inherit the network's activation".
    """

    __slots__ = ("kind", "_values")

    def __init__(self, kind: str, _path: str = "block", **values: Any):
        kind_obj = blocks.get_kind(kind, f"{_path}.kind")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "_values", kind_obj.resolve(values, _path))

    @classmethod
    def from_dict(cls, data: Any, path: str = "block") -> "BlockSpec":
        if isinstance(data, BlockSpec):
            return data
        if not isinstance(data, Mapping):
            raise SpecError(path, f"a block must be an object with a 'kind', got {data!r}")
        if "kind" not in data:
            raise SpecError(f"{path}.kind", f"required; accepted: {', '.join(blocks.KINDS)}")
        values = {k: v for k, v in data.items() if k != "kind"}
        return cls(data["kind"], _path=path, **values)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(f"a {object.__getattribute__(self, 'kind')!r} block has no field {name!r}")

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"BlockSpec is immutable; use .replace({name}=...)")

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def has(self, name: str) -> bool:
        return name in self._values

    @property
    def values(self) -> Dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> "BlockSpec":
        """A copy with some fields changed. Changing ``kind`` keeps the fields the new kind has."""
        kind = changes.pop("kind", self.kind)
        accepted = blocks.get_kind(kind).fields
        values = {k: v for k, v in self._values.items() if k in accepted}  # explicit nulls stay null
        if kind != self.kind and "bias" in values:
            del values["bias"]  # re-derive from the new kind's norm default
        values.update(changes)
        return BlockSpec(kind, **values)

    def to_dict(self) -> Dict[str, Any]:
        """All fields; a null is written only where it differs from the default (e.g. norm: null)."""
        fields = blocks.get_kind(self.kind).fields
        return {"kind": self.kind, **{k: v for k, v in self._values.items()
                                      if v is not None or fields[k].default is not None}}

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, BlockSpec) and self.kind == other.kind and self._values == other._values

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted((k, _hashable(v)) for k, v in self._values.items()))))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items() if v is not None)
        return f"BlockSpec({self.kind!r}, {inner})"


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Site:
    """Where a block sits in a network, with its inferred input/output channels."""
    section: str          # 'stem', 'stage' or 'head'
    stage: int            # 1-based stage number (0 for stem and head)
    index: int            # 1-based position within its section or stage
    path: str             # JSON path, e.g. 'stages[2][0]'
    prefix: str           # layer-name prefix, e.g. 'stage3_block1'
    block: BlockSpec
    in_channels: int
    out_channels: int

    def graph(self, spec: "NetworkSpec"):
        """The block's op graph (``ran_keras.ir.BlockGraph``) at this site of ``spec``: what the
        profiler, NN-Mass and the Keras builder all read."""
        return blocks.get_kind(self.block.kind).expand(self.block, self.in_channels, spec)


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone can output (timm's ``feature_info``): a stage's output.

    ``index`` is what ``out_indices`` refers to (0-based stage number), ``name`` the output's name
    (``stage3``; the model's output layer is ``{model}_{name}``), ``reduction`` the total stride
    at that point, ``block`` the layer-name prefix of the stage's last block.
    """
    index: int
    name: str
    channels: int
    reduction: int
    block: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _tuple_of_floats(value, path: str, length: Optional[int] = None) -> Tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise SpecError(path, f"must be a number or a non-empty list of numbers, got {value!r}")
    if length is not None and len(value) != length:
        raise SpecError(path, f"must have {length} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _blocks(value, path: str) -> Tuple[BlockSpec, ...]:
    if not isinstance(value, (list, tuple)):
        raise SpecError(path, f"must be a list of blocks, got {value!r}")
    return tuple(BlockSpec.from_dict(b, f"{path}[{i}]") for i, b in enumerate(value))


@dataclass(frozen=True)
class NetworkSpec:
    """A whole classification network as data. See the module docstring."""

    name: str
    stages: Tuple[Tuple[BlockSpec, ...], ...]
    stem: Tuple[BlockSpec, ...] = ()
    head: Tuple[BlockSpec, ...] = ()
    activation: str = "relu"
    classifier_dropout: float = 0.0
    family: str = "custom"
    description: str = ""
    input_size: int = 224
    input_channels: int = 3
    input_mean: Tuple[float, ...] = (127.5,)
    input_std: Tuple[float, ...] = (127.5,)
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    alpha_init: float = 0.5
    alpha_clip: Optional[Tuple[float, float]] = None
    classifier_norm: Optional[str] = None   # 'ln': LayerNorm on the pooled features (ConvNeXt's head)
    padding: str = "same"                   # 'same' (TensorFlow) or 'symmetric' (PyTorch); blocks may override
    weight_init: str = "he_fan_out"         # one of WEIGHT_INITS

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SpecError("name", f"must start with a letter and use only letters, digits, '_', "
                                    f"'.' or '-', got {self.name!r}")
        if not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise SpecError("stages", f"must be a non-empty list of stages, got {self.stages!r}")
        stages = []
        for i, stage in enumerate(self.stages):
            blocks_ = _blocks(stage, f"stages[{i}]")
            if not blocks_:
                raise SpecError(f"stages[{i}]", "a stage needs at least one block")
            stages.append(blocks_)
        set_("stages", tuple(stages))
        set_("stem", _blocks(self.stem, "stem"))
        set_("head", _blocks(self.head, "head"))
        set_("activation", activations.canonical(self.activation, "activation"))
        for key in ("family", "description"):
            if not isinstance(getattr(self, key), str):
                raise SpecError(key, f"must be a string, got {getattr(self, key)!r}")
        _check_number("classifier_dropout", self.classifier_dropout, lambda v: 0 <= v < 1, "a number in [0, 1)")
        for key in ("input_size", "input_channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(key, f"must be a positive integer, got {value!r}")
        set_("input_mean", _tuple_of_floats(self.input_mean, "input_mean"))
        set_("input_std", _tuple_of_floats(self.input_std, "input_std"))
        for key in ("input_mean", "input_std"):
            if len(getattr(self, key)) not in (1, self.input_channels):
                raise SpecError(key, f"must have 1 or input_channels={self.input_channels} numbers, "
                                     f"got {list(getattr(self, key))}")
        if any(s <= 0 for s in self.input_std):
            raise SpecError("input_std", f"must be positive, got {list(self.input_std)}")
        _check_number("bn_momentum", self.bn_momentum, lambda v: 0 <= v < 1, "a number in [0, 1)")
        _check_number("bn_epsilon", self.bn_epsilon, lambda v: v > 0, "a positive number")
        _check_number("alpha_init", self.alpha_init, math.isfinite, "a finite number")
        if self.alpha_clip is not None:
            clip = _tuple_of_floats(self.alpha_clip, "alpha_clip", 2)
            if not clip[0] < clip[1]:
                raise SpecError("alpha_clip", f"must be [low, high] with low < high, got {list(clip)}")
            set_("alpha_clip", clip)
        if self.classifier_norm not in (None, "ln"):
            raise SpecError("classifier_norm", f"must be 'ln' or null, got {self.classifier_norm!r}")
        if self.padding not in PADDING_CONVENTIONS:
            raise SpecError("padding", f"must be 'same' (TensorFlow) or 'symmetric' (PyTorch), got {self.padding!r}")
        if self.weight_init not in WEIGHT_INITS:
            raise SpecError("weight_init", f"must be one of {', '.join(WEIGHT_INITS)}, got {self.weight_init!r}")
        set_("classifier_dropout", float(self.classifier_dropout))
        set_("alpha_init", float(self.alpha_init))
        self.sites  # noqa: B018 - validates channel flow and residual rules now

    # --- structure -------------------------------------------------------------------------

    @functools.cached_property
    def sites(self) -> Tuple[Site, ...]:
        """Every block with its place and inferred channels, in network order."""
        out: List[Site] = []
        cin = self.input_channels
        sections = ([("stem", 0, "stem", self.stem)]
                    + [("stage", i + 1, f"stages[{i}]", s) for i, s in enumerate(self.stages)]
                    + [("head", 0, "head", self.head)])
        for section, stage, base, blist in sections:
            for j, block in enumerate(blist):
                path = f"{base}[{j}]"
                kind = blocks.get_kind(block.kind)
                kind.check_input(block, cin, path)
                cout = kind.out_channels(block, cin)
                prefix = f"stage{stage}_block{j + 1}" if section == "stage" else f"{section}_block{j + 1}"
                out.append(Site(section, stage, j + 1, path, prefix, block, cin, cout))
                cin = cout
        return tuple(out)

    @property
    def features(self) -> int:
        """Channels of the feature map the classifier sees."""
        return self.sites[-1].out_channels

    @property
    def total_stride(self) -> int:
        stride = 1
        for site in self.sites:
            stride *= site.block.get("stride", 1) or 1
        return stride

    @functools.cached_property
    def feature_info(self) -> Tuple[FeatureInfo, ...]:
        """The output of every stage: channels and total stride (a block's ``stride`` field is its
        spatial stride). Head blocks are not features."""
        out, stride = [], 1
        for site in self.sites:
            stride *= site.block.get("stride", 1) or 1
            if site.section == "stage" and site.index == len(self.stages[site.stage - 1]):
                out.append(FeatureInfo(site.stage - 1, f"stage{site.stage}", site.out_channels, stride, site.prefix))
        return tuple(out)

    @property
    def default_out_indices(self) -> Tuple[int, ...]:
        """The last stage at each total stride (what a detector or segmenter usually takes)."""
        info = self.feature_info
        return tuple(f.index for i, f in enumerate(info) if i + 1 == len(info) or info[i + 1].reduction != f.reduction)

    def check_out_indices(self, out_indices: Optional[Sequence[int]]) -> Tuple[int, ...]:
        """``out_indices`` as a tuple of stage indices (None: ``default_out_indices``); negative
        indices count from the end, as in timm. SpecError names the accepted range."""
        if out_indices is None:
            return self.default_out_indices
        n = len(self.stages)
        if isinstance(out_indices, int) and not isinstance(out_indices, bool):
            out_indices = (out_indices,)
        try:
            picked = [int(i) for i in out_indices]
        except (TypeError, ValueError):
            raise SpecError("out_indices", f"must be stage indices (0..{n - 1}), got {out_indices!r}") from None
        bad = [i for i in picked if not -n <= i < n]
        if not picked or bad:
            raise SpecError("out_indices", f"{self.name} has {n} stages, so indices must be in {-n}..{n - 1}, "
                                           f"got {list(out_indices)!r}")
        resolved = tuple(i % n for i in picked)
        if len(set(resolved)) != len(resolved):
            raise SpecError("out_indices", f"each stage at most once, got {list(out_indices)!r}")
        return resolved

    def blocks(self) -> Iterable[BlockSpec]:
        return (site.block for site in self.sites)

    def check_input_shape(self, input_shape: Sequence[Optional[int]]) -> Tuple[Optional[int], ...]:
        """Validate an (H, W, C) input shape for this network; returns it as a tuple."""
        shape = tuple(input_shape)
        if len(shape) != 3:
            raise InputShapeError(f"input_shape must be (height, width, channels), got {input_shape!r}")
        h, w, c = shape
        if c != self.input_channels:
            raise InputShapeError(f"input_shape {shape} has {c} channels; {self.name} takes "
                                  f"input_channels={self.input_channels} (set it in the spec to change)")
        stride = self.total_stride
        for label, size in (("height", h), ("width", w)):
            if size is None:
                continue
            if isinstance(size, bool) or not isinstance(size, int) or size < stride:
                raise InputShapeError(
                    f"input_shape {shape} is too small for {self.name}: its total stride is {stride}, "
                    f"so {label} must be an integer of at least {stride}")
        return shape

    # --- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"format": SPEC_FORMAT, "version": SPEC_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("stem", "head"):
                value = [b.to_dict() for b in value]
            elif f.name == "stages":
                value = [[b.to_dict() for b in stage] for stage in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def to_json(self, indent: Optional[int] = 1) -> str:
        return fileio.json_text(self.to_dict(), indent, what=f"spec {self.name}")

    @classmethod
    def from_dict(cls, data: Any) -> "NetworkSpec":
        if not isinstance(data, Mapping):
            raise SpecError("", f"a network spec must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise SpecError("format", f"must be {SPEC_FORMAT!r}, got {fmt!r}")
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError("version", f"this ran_keras reads spec version {SPEC_VERSION}, got {version!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise SpecError(key, f"unknown field{close_matches(key, names)}; accepted: "
                                     f"{', '.join(names)}")
        for key in ("name", "stages"):
            if key not in data:
                raise SpecError(key, "required")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> "NetworkSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError("", f"{source} is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "NetworkSpec":
        """Read a spec .json; every error names the file."""
        path = Path(path)
        if not path.is_file():
            raise SpecError("", f"spec file {str(path)!r} does not exist")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise SpecError("", f"not a text file (byte {err.start} is not UTF-8); expected a ran-keras spec "
                                "JSON (`ran spec MODEL` writes one)", source=str(path)) from None
        try:
            return cls.from_json(text, source="the file")
        except SpecError as err:
            raise err.in_file(str(path)) from None

    def save(self, path: Union[str, Path]) -> Path:
        return fileio.write_text(path, self.to_json())

    def replace(self, **changes: Any) -> "NetworkSpec":
        return dataclasses.replace(self, **changes)


def sidecar_path(model_path: Union[str, Path]) -> Path:
    """Where the spec of a saved model file lives: ``x.keras`` / ``x.tflite`` -> ``x.spec.json``
    (written by training, ``ran weights import`` and ``ran export``)."""
    return Path(model_path).with_suffix(".spec.json")


def load_sidecar(model_path: Union[str, Path]) -> Optional["NetworkSpec"]:
    """The spec beside a saved model file (``sidecar_path``), or None when there is none."""
    path = sidecar_path(model_path)
    return NetworkSpec.load(path) if path.is_file() else None


def _check_number(key: str, value: Any, ok: Callable[[float], bool], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise SpecError(key, f"must be {what}, got {value!r}")
