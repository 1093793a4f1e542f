"""What every block kind is made of: ``Field`` (one spec field), ``BlockKind`` (a schema plus the
expansion into the IR), the kind registry, and the fields and helpers kinds share.

This module imports no kind. To add one, subclass ``BlockKind`` in a module of this package,
declare ``fields``, implement ``expand`` (and ``out_channels`` / ``check_input`` if needed),
decorate it with ``@register_kind`` and import the module in ``ran_keras/blocks/__init__.py``;
the spec validator, the profiler, NN-Mass, the builder and the JSON format pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ran_keras import activations, ir
from ran_keras.errors import SpecError, close_matches

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One spec field: accepted type(s), default (REQUIRED if none), optional check -> message."""
    types: Tuple[type, ...]
    default: Any = REQUIRED
    check: Optional[Callable[[Any], Optional[str]]] = None
    doc: str = ""
    nullable: bool = False

    def coerce(self, value: Any, path: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise SpecError(path, "must not be null")
        if isinstance(value, bool) and bool not in self.types:
            raise SpecError(path, f"must be {self._type_names()}, got {value!r}")
        if float in self.types and isinstance(value, int) and not isinstance(value, bool):
            value = value if int in self.types else float(value)
        if int in self.types and isinstance(value, float) and value.is_integer() and float not in self.types:
            value = int(value)
        if not isinstance(value, self.types):
            raise SpecError(path, f"must be {self._type_names()}, got {value!r}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise SpecError(path, f"{problem}, got {value!r}")
        return value

    def _type_names(self) -> str:
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                 list: "a list", tuple: "a list"}
        text = " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in self.types))
        return text + (" or null" if self.nullable else "")


def positive(value) -> Optional[str]:
    return None if value > 0 else "must be positive"


def stride_check(value) -> Optional[str]:
    return None if value in (1, 2, 4) else "must be 1, 2 or 4"


def activation_check(value) -> Optional[str]:
    try:
        activations.canonical(value)
    except SpecError as err:
        return err.detail.split(", got")[0]
    return None


def padding_check(value) -> Optional[str]:
    return None if value in ir.PADDINGS else f"must be one of {', '.join(map(repr, ir.PADDINGS))} or null"


def norm_check(value) -> Optional[str]:
    return None if value in ("bn", "ln") else "must be 'bn', 'ln' or null"


CHANNELS = Field((int,), REQUIRED, positive, "output channels")
KERNEL = Field((int,), 3, positive, "spatial kernel size (k x k)")
STRIDE = Field((int,), 1, stride_check, "spatial stride")
EXPANSION = Field((int, float), 6, positive, "hidden channels = round(expansion * input channels)")
ACTIVATION = Field((str,), None, activation_check,
                   "activation name; null inherits the network's activation", nullable=True)
MID = Field((int,), None, positive, "pair form: two sub-blocks C -> mid -> C with an outer residual",
            nullable=True)
ALPHA_INIT = Field((int, float), None, None, "initial alpha; null inherits the network's alpha_init",
                   nullable=True)
PADDING = Field((str,), None, padding_check,
                "'same' (TensorFlow), 'valid' (none) or 'symmetric' (PyTorch); null inherits the network's "
                "padding", nullable=True)
PAD_EXPANDED = Field((bool,), False, None,
                     "AFRBs: zero-pad the expanded map before its BN and run the depthwise conv 'valid', so "
                     "that at alpha = 1 the block folds into one plain k x k conv with no border map (same "
                     "MACs; `ran fold`, WORKSPACE.md 'Folding')")


class BlockKind:
    """Base class: a spec schema plus the expansion of a block into ``ir.BlockGraph``."""

    name: str = ""
    doc: str = ""
    fields: Dict[str, Field] = {}

    def resolve(self, values: Mapping[str, Any], path: str) -> Dict[str, Any]:
        """Type-check ``values``, fill defaults, canonicalise; returns every field of the kind."""
        unknown = [k for k in values if k not in self.fields]
        if unknown:
            bad = unknown[0]
            raise SpecError(f"{path}.{bad}",
                            f"unknown field for a {self.name!r} block{close_matches(bad, self.fields)}; "
                            f"accepted: kind, {', '.join(self.fields)}")
        out: Dict[str, Any] = {}
        for key, field in self.fields.items():
            if key in values:
                out[key] = field.coerce(values[key], f"{path}.{key}")
            elif field.default is REQUIRED:
                raise SpecError(f"{path}.{key}", f"required for a {self.name!r} block")
            else:
                out[key] = field.default
        if out.get("activation") is not None:
            out["activation"] = activations.canonical(out["activation"], f"{path}.activation")
        return self.finalize(out, path)

    def finalize(self, values: Dict[str, Any], path: str) -> Dict[str, Any]:
        return values

    def out_channels(self, block, cin: int) -> int:
        return block.channels

    def check_input(self, block, cin: int, path: str) -> None:
        """Raise SpecError if the block cannot follow a tensor with ``cin`` channels."""

    def expand(self, block, cin: int, net) -> ir.BlockGraph:
        raise NotImplementedError


KINDS: Dict[str, BlockKind] = {}


def register_kind(cls):
    kind = cls()
    if kind.name in KINDS:
        raise ValueError(f"block kind {kind.name!r} registered twice")
    KINDS[kind.name] = kind
    return cls


def get_kind(name: Any, path: str = "kind") -> BlockKind:
    if not isinstance(name, str) or name not in KINDS:
        raise SpecError(path, f"unknown block kind {name!r}{close_matches(name, KINDS)}; "
                              f"accepted: {', '.join(KINDS)}")
    return KINDS[name]


def block_activation(block, net) -> str:
    return block.activation or net.activation


def block_padding(block, net) -> str:
    """The block's own padding, else the network's convention."""
    return block.get("padding") or net.padding


def can_add(cin: int, cout: int, stride: int) -> bool:
    return stride == 1 and cin == cout


def require_residual(kind: str, cin: int, cout: int, stride: int, path: str, why: str) -> None:
    if not can_add(cin, cout, stride):
        raise SpecError(path, f"a {kind!r} block {why} needs a residual, which needs stride 1 and "
                              f"input channels == channels; got stride {stride}, {cin} -> {cout} channels")


def hidden_channels(expansion: float, cin: int, cout: int, pair: bool) -> int:
    """Expanded width: e * input channels; in pair sub-blocks e * max(sub-block in, out)."""
    base = max(cin, cout) if pair else cin
    return max(1, int(round(expansion * base)))


def pair_blocks(cin: int, mid: int, cout: int):
    return (("sub1_", cin, mid), ("sub2_", mid, cout))
