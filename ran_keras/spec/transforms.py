"""Spec-to-spec transforms: change the activation, scale width or depth, set stochastic depth,
realise a searched SuperNet. Each returns a new, validated ``NetworkSpec``; none imports TensorFlow."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ran_keras import activations, blocks
from ran_keras.errors import SpecError
from ran_keras.spec.network import BlockSpec, NetworkSpec, Site


def map_blocks(spec: NetworkSpec, fn: Callable[[Site], BlockSpec], **changes: Any) -> NetworkSpec:
    """A new spec with every block replaced by ``fn(site)``; other fields from ``changes``."""
    new = {"stem": [], "head": [], "stages": [[] for _ in spec.stages]}
    for site in spec.sites:
        block = fn(site)
        if site.section == "stage":
            new["stages"][site.stage - 1].append(block)
        else:
            new[site.section].append(block)
    return spec.replace(stem=tuple(new["stem"]), head=tuple(new["head"]),
                        stages=tuple(tuple(s) for s in new["stages"]), **changes)


def with_activation(spec: NetworkSpec, activation: str) -> NetworkSpec:
    """Use ``activation`` everywhere the network has a non-linearity (except AFRB PReLUs).

    Blocks that inherit the network activation follow it; blocks with an explicit non-linear
    activation are switched too; explicit 'linear' (no activation) stays linear.
    """
    act = activations.canonical(activation)

    def swap(site: Site) -> BlockSpec:
        b = site.block
        if b.has("activation") and b.activation not in (None, "linear"):
            return b.replace(activation=act)
        return b

    return map_blocks(spec, swap, activation=act)


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's rounding: nearest multiple of ``divisor``, never more than 10% below ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


ROUNDINGS: Dict[str, Callable[[float], int]] = {
    "floor": lambda x: int(math.floor(x + 1e-9)),
    "round": lambda x: int(math.floor(x + 0.5)),
    "divisible8": make_divisible,
}


def _rounding(multiplier: float, rounding: str) -> Callable[[float], int]:
    """Check a width/depth multiplier and a rounding name; returns the rounding function."""
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier <= 0:
        raise SpecError("multiplier", f"must be a positive number, got {multiplier!r}")
    if rounding not in ROUNDINGS:
        raise SpecError("rounding", f"unknown rounding {rounding!r}; accepted: {', '.join(ROUNDINGS)}")
    return ROUNDINGS[rounding]


def scale_width(spec: NetworkSpec, multiplier: float, *, rounding: str = "round", stem: bool = True,
                head: bool = False, name: Optional[str] = None) -> NetworkSpec:
    """Multiply block widths (``channels`` and ``mid_channels``) by ``multiplier``.

    ``rounding``: 'floor' (truncate), 'round' (half up) or 'divisible8' (MobileNet's
    make_divisible). The stem is scaled unless ``stem=False``; the head is kept unless ``head=True``.
    """
    rnd = _rounding(multiplier, rounding)

    def scale(site: Site) -> BlockSpec:
        b = site.block
        if (site.section == "stem" and not stem) or (site.section == "head" and not head):
            return b
        changes = {k: max(1, rnd(b.get(k) * multiplier)) for k in ("channels", "mid_channels")
                   if b.get(k) is not None}
        return b.replace(**changes) if changes else b

    return map_blocks(spec, scale, name=name or spec.name)


def _depth_key(block: BlockSpec) -> BlockSpec:
    return block.replace(drop_path=0.0) if block.has("drop_path") else block


def stage_depths(spec: NetworkSpec) -> Tuple[int, ...]:
    """Per stage, the length of the trailing run of identical blocks (drop_path aside): its depth."""
    out = []
    for stage in spec.stages:
        last, n = _depth_key(stage[-1]), 0
        while n < len(stage) and _depth_key(stage[-1 - n]) == last:
            n += 1
        out.append(n)
    return tuple(out)


def scale_depth(spec: NetworkSpec, multiplier: float, *, rounding: str = "round",
                name: Optional[str] = None) -> NetworkSpec:
    """Multiply every stage's depth by ``multiplier`` (at least one block per stage).

    A stage's depth is its trailing run of identical blocks (``stage_depths``); the blocks before
    the run (a downsampling layer, a first block that changes stride or width) are kept once, and
    the run becomes ``max(1, rounding(n * multiplier))`` copies of its last block (including its
    ``drop_path``: re-apply a per-block rule afterwards). ``rounding`` as in ``scale_width``.
    """
    rnd = _rounding(multiplier, rounding)
    stages = []
    for stage, n in zip(spec.stages, stage_depths(spec)):
        stages.append(tuple(stage[:len(stage) - n]) + (stage[-1],) * max(1, rnd(n * multiplier)))
    return spec.replace(stages=tuple(stages), name=name or spec.name)


def afrb_sites(spec: NetworkSpec) -> Tuple[Site, ...]:
    """The AFRB blocks of a spec, in network order (the order of their alphas)."""
    return tuple(s for s in spec.sites if s.block.kind in blocks.AFRB_KINDS)


def realize_afrbs(spec: NetworkSpec, collapse: Union[Sequence[bool], Mapping[str, bool], Callable[[Site], bool]],
                  *, name: Optional[str] = None, activation: Optional[str] = None,
                  description: Optional[str] = None) -> NetworkSpec:
    """Turn every AFRB into a deployable block: 'collapsed' where ``collapse`` says so, else 'ibn'.

    This is the paper's step from a searched PReLU SuperNet to a SubNetwork: an AFRB whose alpha
    reached ~1 becomes the collapsed BN -> act -> k x k conv block (AFRB-3: the residual conv
    pair), every other AFRB becomes an IBN with the activation after the expansion restored.
    ``collapse`` is one bool per AFRB (network order), a {site path: bool} mapping, or a
    function of the ``Site``. ``activation`` sets the network activation (default: unchanged).
    """
    sites = afrb_sites(spec)
    if callable(collapse):
        decide = collapse
    elif isinstance(collapse, Mapping):
        unknown = [k for k in collapse if k not in {s.path for s in sites}]
        if unknown:
            raise SpecError("collapse", f"{unknown[0]!r} is not an AFRB of {spec.name}; AFRBs are at "
                                        f"{', '.join(s.path for s in sites)}")
        decide = lambda site: bool(collapse.get(site.path, False))  # noqa: E731
    else:
        flags = list(collapse)
        if len(flags) != len(sites):
            raise SpecError("collapse", f"{spec.name} has {len(sites)} AFRBs, got {len(flags)} decisions")
        by_path = {s.path: bool(f) for s, f in zip(sites, flags)}
        decide = lambda site: by_path[site.path]  # noqa: E731

    def convert(site: Site) -> BlockSpec:
        b = site.block
        if b.kind not in blocks.AFRB_KINDS:
            return b
        kind = "collapsed" if decide(site) else "ibn"
        fields = dict(channels=b.channels, kernel=b.kernel, stride=b.stride, expansion=b.expansion)
        if b.kind == "afrb3":
            fields["mid_channels"] = b.mid_channels
        return BlockSpec(kind, **fields)

    changes: Dict[str, Any] = {"name": name or spec.name}
    if activation is not None:
        changes["activation"] = activations.canonical(activation)
    if description is not None:
        changes["description"] = description
    return map_blocks(spec, convert, **changes)


# --- stochastic depth and ConvNeXt-family scaling -----------------------------------------------

def drop_path_rates(count: int, rate: float) -> List[float]:
    """ConvNeXt's linear stochastic-depth rule: 0 for the first of ``count`` blocks, ``rate`` for the last."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise SpecError("drop_path", f"must be in [0, 1), got {rate!r}")
    if count <= 1:
        return [0.0] * count
    return [round(rate * i / (count - 1), 6) for i in range(count)]


def model_drop_path(spec: NetworkSpec) -> float:
    """The model-level rate: the largest per-block ``drop_path`` (that of the last block)."""
    return max((b.drop_path for b in spec.blocks() if b.has("drop_path")), default=0.0)


def with_drop_path(spec: NetworkSpec, rate: float) -> NetworkSpec:
    """Set every block's ``drop_path`` by the linear rule for the model-level ``rate``; SpecError
    if no block has a ``drop_path`` field."""
    sites = [s for s in spec.sites if s.block.has("drop_path")]
    if not sites:
        raise SpecError("drop_path", f"{spec.name} has no blocks with a drop_path field (ConvNeXt-style blocks "
                                     f"have one)")
    rates = dict(zip((s.path for s in sites), drop_path_rates(len(sites), rate)))
    return map_blocks(spec, lambda s: s.block.replace(drop_path=rates[s.path]) if s.path in rates else s.block)


def scale_width_depth(base: NetworkSpec, wm: float, dm: float, *, name: Optional[str] = None,
                      drop_path: Optional[float] = None, description: str = "") -> NetworkSpec:
    """``base`` with widths ``round(w * wm)`` and depths ``round(d * dm)`` (RAN-i, paper Sec. 3.3).

    ``drop_path``: the model-level stochastic-depth rate of the result (default: the base's), re-applied
    by the linear rule when the blocks have the field.
    """
    rate = model_drop_path(base) if drop_path is None else drop_path
    spec = scale_depth(scale_width(base, wm, rounding="round", stem=True), dm, rounding="round")
    if any(b.has("drop_path") for b in spec.blocks()):
        spec = with_drop_path(spec, rate)
    return spec.replace(name=name or base.name, description=description or (
        f"{base.name} scaled by width multiplier {wm:g} and depth multiplier {dm:g}"))


# --- ConvNeXt block co-design (paper Sec. 4) ----------------------------------------------------

def _convnext_blocks(spec: NetworkSpec, what: str) -> None:
    if not any(b.kind == "convnext" for b in spec.blocks()):
        raise SpecError("stages", f"{what} needs 'convnext' blocks; {spec.name} has none")


def prune_hidden(spec: NetworkSpec, fraction: float, *, name: Optional[str] = None,
                 description: Optional[str] = None) -> NetworkSpec:
    """Channel-prune the hidden layer of every 'convnext' block: expansion times ``1 - fraction``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise SpecError("fraction", f"must be in [0, 1), got {fraction!r}")
    _convnext_blocks(spec, "prune_hidden")

    def prune(site: Site) -> BlockSpec:
        b = site.block
        return b.replace(expansion=round(b.expansion * (1 - fraction), 9)) if b.kind == "convnext" else b

    return map_blocks(spec, prune, name=name or spec.name, **({"description": description} if description else {}))


def to_codesign(spec: NetworkSpec, linear_fraction: float = 0.4, psi: str = "linear", *, lower: str = "folded",
                name: Optional[str] = None, description: Optional[str] = None) -> NetworkSpec:
    """Every 'convnext' block as a 'convnext_codesign' block (paper Fig. 8b/c): ``linear_fraction`` of
    its hidden channels linearised into the lower branch, ``psi`` after it, in the ``lower`` form."""
    _convnext_blocks(spec, "to_codesign")
    extra = {"linear_fraction": linear_fraction, "psi": psi, "lower": lower}

    def convert(site: Site) -> BlockSpec:
        b = site.block
        return b.replace(kind="convnext_codesign", **extra) if b.kind == "convnext" else b

    return map_blocks(spec, convert, name=name or spec.name, **({"description": description} if description else {}))
