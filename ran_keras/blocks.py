"""Block kinds: the schema of each kind's spec fields and its expansion into the IR.

A block kind is registered with ``@register_kind``. To add one (for example the ConvNeXt block),
subclass ``BlockKind``, declare ``fields``, and implement ``out_channels`` and ``expand``; the
spec validator, the profiler, the Keras builder and the JSON format pick it up from here.
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


def _norm_check(value) -> Optional[str]:
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


def _act(block, net) -> str:
    return block.activation or net.activation


def _can_add(cin: int, cout: int, stride: int) -> bool:
    return stride == 1 and cin == cout


def _require_residual(kind: str, cin: int, cout: int, stride: int, path: str, why: str) -> None:
    if not _can_add(cin, cout, stride):
        raise SpecError(path, f"a {kind!r} block {why} needs a residual, which needs stride 1 and "
                              f"input channels == channels; got stride {stride}, {cin} -> {cout} channels")


def hidden_channels(expansion: float, cin: int, cout: int, pair: bool) -> int:
    """Expanded width: e * input channels; in pair sub-blocks e * max(sub-block in, out)."""
    base = max(cin, cout) if pair else cin
    return max(1, int(round(expansion * base)))


def _pair(cin: int, mid: int, cout: int):
    return (("sub1_", cin, mid), ("sub2_", mid, cout))


@register_kind
class ConvBlock(BlockKind):
    name = "conv"
    doc = "k x k convolution -> optional BN -> activation (stems, heads, RepVGG deploy blocks)"
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "activation": ACTIVATION,
              "norm": Field((str,), "bn", _norm_check, "'bn', 'ln' or null", nullable=True),
              "bias": Field((bool,), None, None, "null: bias only when norm is null", nullable=True)}

    def finalize(self, values, path):
        if values["bias"] is None:
            values["bias"] = values["norm"] is None
        return values

    def expand(self, b, cin, net):
        ops = [ir.Conv("conv", b.channels, b.kernel, b.stride, b.bias)]
        if b.norm == "bn":
            ops.append(ir.BatchNorm("bn"))
        elif b.norm == "ln":
            ops.append(ir.LayerNorm("ln"))
        ops += ir.act_ops("act", _act(b, net))
        return ir.BlockGraph(tuple(ops))


@register_kind
class DepthwiseBlock(BlockKind):
    name = "dw"
    doc = "k x k depthwise convolution -> BN -> activation (the RAN-e top's 7x7 layer)"
    fields = {"kernel": KERNEL, "stride": STRIDE, "activation": ACTIVATION,
              "norm": Field((str,), "bn", _norm_check, "'bn', 'ln' or null", nullable=True),
              "bias": Field((bool,), None, None, "null: bias only when norm is null", nullable=True)}
    finalize = ConvBlock.finalize

    def out_channels(self, b, cin):
        return cin

    def expand(self, b, cin, net):
        ops = [ir.DepthwiseConv("dw", b.kernel, b.stride, b.bias)]
        if b.norm == "bn":
            ops.append(ir.BatchNorm("bn"))
        elif b.norm == "ln":
            ops.append(ir.LayerNorm("ln"))
        ops += ir.act_ops("act", _act(b, net))
        return ir.BlockGraph(tuple(ops))


@register_kind
class MaxPoolBlock(BlockKind):
    name = "maxpool"
    doc = "k x k max pooling, 'same' padding (the ResNet stem)"
    fields = {"kernel": KERNEL, "stride": Field((int,), 2, stride_check)}

    def out_channels(self, b, cin):
        return cin

    def expand(self, b, cin, net):
        return ir.BlockGraph((ir.MaxPool("pool", b.kernel, b.stride),))


def _ibn_ops(prefix: str, cin: int, hidden: int, cout: int, kernel: int, stride: int, act: str):
    ops = []
    if hidden != cin:
        ops += [ir.Conv(prefix + "expand", hidden, 1), ir.BatchNorm(prefix + "expand_bn")]
        ops += ir.act_ops(prefix + "expand_act", act)
    ops += [ir.DepthwiseConv(prefix + "dw", kernel, stride), ir.BatchNorm(prefix + "dw_bn")]
    ops += ir.act_ops(prefix + "dw_act", act)
    ops += [ir.Conv(prefix + "project", cout, 1), ir.BatchNorm(prefix + "project_bn")]
    return ops


@register_kind
class IBNBlock(BlockKind):
    name = "ibn"
    doc = ("inverted bottleneck (MBConv without squeeze-excite): 1x1 expand -> BN -> act -> "
           "k x k depthwise -> BN -> act -> 1x1 project -> BN, residual when stride 1 and in == out; "
           "with mid_channels, two such sub-blocks C -> mid -> C with an outer residual")
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "expansion": EXPANSION,
              "activation": ACTIVATION, "mid_channels": MID}

    def check_input(self, b, cin, path):
        if b.mid_channels is not None:
            _require_residual(self.name, cin, b.channels, b.stride, path, "with mid_channels (pair form)")

    def expand(self, b, cin, net):
        act = _act(b, net)
        if b.mid_channels is None:
            hidden = hidden_channels(b.expansion, cin, b.channels, pair=False)
            ops = _ibn_ops("", cin, hidden, b.channels, b.kernel, b.stride, act)
            return ir.BlockGraph(tuple(ops), () if _can_add(cin, b.channels, b.stride) else None)
        ops = []
        for prefix, a, z in _pair(cin, b.mid_channels, b.channels):
            ops += _ibn_ops(prefix, a, hidden_channels(b.expansion, a, z, pair=True), z, b.kernel, 1, act)
        return ir.BlockGraph(tuple(ops), ())


def _collapsed_ops(prefix: str, cout: int, kernel: int, stride: int, act: str, leading_bn: bool):
    ops = [ir.BatchNorm(prefix + "pre_bn")] if leading_bn else []
    ops += ir.act_ops(prefix + "act", act)
    ops += [ir.Conv(prefix + "conv", cout, kernel, stride), ir.BatchNorm(prefix + "bn")]
    return ops


@register_kind
class CollapsedBlock(BlockKind):
    name = "collapsed"
    doc = ("a restructured AFRB/IBN: BN -> act -> k x k conv -> BN, residual when stride 1 and "
           "in == out; with mid_channels (the AFRB-3 slot) two convs C -> mid -> C with an act between "
           "and an outer residual. 'expansion' records the expanded (trainable) form it stands for; "
           "it does not change the deployed block")
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "expansion": EXPANSION,
              "activation": ACTIVATION, "mid_channels": MID}
    check_input = IBNBlock.check_input

    def expand(self, b, cin, net):
        act = _act(b, net)
        if b.mid_channels is None:
            ops = _collapsed_ops("", b.channels, b.kernel, b.stride, act, leading_bn=True)
            return ir.BlockGraph(tuple(ops), () if _can_add(cin, b.channels, b.stride) else None)
        ops = (_collapsed_ops("sub1_", b.mid_channels, b.kernel, 1, act, leading_bn=True)
               + _collapsed_ops("sub2_", b.channels, b.kernel, 1, act, leading_bn=False))
        return ir.BlockGraph(tuple(ops), ())


def _afrb_ops(prefix: str, cin: int, hidden: int, cout: int, kernel: int, stride: int, alpha,
              pad_expanded: bool = False):
    init, clip = alpha
    ops = [ir.SharedPReLU("alpha", True, init, clip)]
    padding = "same"
    if hidden != cin:
        ops.append(ir.Conv(prefix + "expand", hidden, 1))
        if pad_expanded:  # BN(pad(expand(x))): the ring carries the BN shift, so the fold is a plain conv
            ops.append(ir.ZeroPad(prefix + "pad", kernel, stride))
            padding = "valid"
        ops.append(ir.BatchNorm(prefix + "expand_bn"))
    ops += [ir.DepthwiseConv(prefix + "dw", kernel, stride, padding=padding), ir.BatchNorm(prefix + "dw_bn"),
            ir.SharedPReLU("alpha", False, init, clip),
            ir.Conv(prefix + "project", cout, 1), ir.BatchNorm(prefix + "project_bn")]
    return ops


class _AFRB(BlockKind):
    """PReLU(1 - a) -> 1x1 expand -> BN -> k x k depthwise -> BN -> PReLU(a) -> 1x1 project -> BN."""
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "expansion": EXPANSION,
              "alpha_init": ALPHA_INIT, "pad_expanded": PAD_EXPANDED}
    residual = False

    def _alpha(self, b, net):
        init = b.alpha_init if b.alpha_init is not None else net.alpha_init
        return float(init), net.alpha_clip

    def check_input(self, b, cin, path):
        if self.residual:
            _require_residual(self.name, cin, b.channels, b.stride, path, "")

    def expand(self, b, cin, net):
        hidden = hidden_channels(b.expansion, cin, b.channels, pair=False)
        ops = _afrb_ops("", cin, hidden, b.channels, b.kernel, b.stride, self._alpha(b, net), b.pad_expanded)
        return ir.BlockGraph(tuple(ops), () if self.residual else None)


@register_kind
class AFRB1(_AFRB):
    name = "afrb1"
    doc = "AFRB-1: " + _AFRB.__doc__ + " No residual."


@register_kind
class AFRB2(_AFRB):
    name = "afrb2"
    doc = "AFRB-2: AFRB-1 plus a residual (needs stride 1 and in == out)."
    residual = True


@register_kind
class AFRB3(_AFRB):
    name = "afrb3"
    doc = ("AFRB-3: two AFRB sub-blocks C -> mid -> C (mid defaults to C/2) sharing one alpha, with an "
           "outer residual; each expands to expansion * max(in, out). At alpha = 1 it collapses to a "
           "residual pair of k x k convs with the MACs of a collapsed AFRB-1")
    fields = dict(_AFRB.fields, mid_channels=MID)
    residual = True

    def finalize(self, values, path):
        if values["mid_channels"] is None:
            values["mid_channels"] = max(1, values["channels"] // 2)
        if values["stride"] != 1:
            raise SpecError(f"{path}.stride", f"an 'afrb3' block keeps its resolution; must be 1, "
                                              f"got {values['stride']}")
        return values

    def expand(self, b, cin, net):
        alpha = self._alpha(b, net)
        ops = []
        for prefix, a, z in _pair(cin, b.mid_channels, b.channels):
            ops += _afrb_ops(prefix, a, hidden_channels(b.expansion, a, z, pair=True), z, b.kernel, 1, alpha,
                             b.pad_expanded)
        return ir.BlockGraph(tuple(ops), ())


@register_kind
class BasicBlock(BlockKind):
    name = "basic"
    doc = ("ResNet basic block: k x k conv -> BN -> act -> k x k conv -> BN, plus the identity or a "
           "1x1 conv + BN projection, then act")
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "activation": ACTIVATION}

    def expand(self, b, cin, net):
        act = _act(b, net)
        main = [ir.Conv("conv1", b.channels, b.kernel, b.stride), ir.BatchNorm("bn1"),
                *ir.act_ops("act1", act), ir.Conv("conv2", b.channels, b.kernel), ir.BatchNorm("bn2")]
        if _can_add(cin, b.channels, b.stride):
            shortcut = ()
        else:
            shortcut = (ir.Conv("proj", b.channels, 1, b.stride), ir.BatchNorm("proj_bn"))
        return ir.BlockGraph(tuple(main), shortcut, tuple(ir.act_ops("out_act", act)))


AFRB_KINDS = ("afrb1", "afrb2", "afrb3")


from ran_keras import convnext_blocks  # noqa: E402,F401  (registers the 'convnext' and 'convnext_down' kinds)
