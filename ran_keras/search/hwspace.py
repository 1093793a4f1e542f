"""The discrete search space of the hardware-aware restructuring (issue 15): per AFRB site of a PReLU
SuperNet, the choices the paper made by hand in Sec. 2.5 (IBN or collapsed, kernel 3/5/7, ReLU6 or
hard-swish), plus the activation of the head. Pure Python: no numpy, no TensorFlow.

A *design* is one choice per site and a head activation; ``design_spec`` turns it into a deployable
spec (``realize_afrbs``, then kernel and activation per block), so every design is a normal spec that
the builder, the profiler, ``ran export`` and ``ran vela`` take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ran_keras import activations
from ran_keras.errors import RanError
from ran_keras.spec import NetworkSpec, afrb_sites, map_blocks, realize_afrbs

FORMS = ("ibn", "collapsed")
KERNELS = (3, 5, 7)
ACTIVATIONS = ("relu6", "hard_swish")


class SpaceError(RanError, ValueError):
    """A design or choice that is not in the search space."""


@dataclass(frozen=True, order=True)
class Choice:
    """What one AFRB site becomes."""
    form: str
    kernel: int
    activation: str

    def __post_init__(self):
        if self.form not in FORMS or self.kernel not in KERNELS or self.activation not in ACTIVATIONS:
            raise SpaceError(f"choice {self.form}/{self.kernel}/{self.activation} is not in the space; forms "
                             f"{', '.join(FORMS)}, kernels {', '.join(map(str, KERNELS))}, activations "
                             f"{', '.join(ACTIVATIONS)}")

    @property
    def key(self) -> str:
        return f"{self.form}-k{self.kernel}-{self.activation}"

    @classmethod
    def parse(cls, key: str) -> "Choice":
        try:
            form, k, act = key.split("-")
            return cls(form, int(k.lstrip("k")), act)
        except (ValueError, AttributeError):
            raise SpaceError(f"{key!r} is not a choice key such as 'ibn-k3-relu6'") from None

    @property
    def lut(self) -> bool:
        """Does the block start with a lookup-table activation that Vela fuses into the conv before it?"""
        return self.form == "collapsed" and self.activation != "relu6"


ALL_CHOICES: Tuple[Choice, ...] = tuple(Choice(f, k, a) for f in FORMS for k in KERNELS for a in ACTIVATIONS)


@dataclass(frozen=True)
class Design:
    """One choice per AFRB site (network order) and the head's activation."""
    choices: Tuple[Choice, ...]
    head_activation: str = "hard_swish"

    def __post_init__(self):
        if self.head_activation not in ACTIVATIONS:
            raise SpaceError(f"head activation must be one of {', '.join(ACTIVATIONS)}, got {self.head_activation!r}")

    @classmethod
    def uniform(cls, choice: Choice, n: int) -> "Design":
        return cls(tuple([choice] * n), choice.activation)

    def to_dict(self) -> Dict[str, object]:
        return {"choices": [c.key for c in self.choices], "head_activation": self.head_activation}

    @classmethod
    def from_dict(cls, data) -> "Design":
        return cls(tuple(Choice.parse(k) for k in data["choices"]), data.get("head_activation", "hard_swish"))


def sites(supernet: NetworkSpec) -> List[str]:
    """Layer-name prefixes of the AFRB sites (network order): the keys of the cost table."""
    return [s.prefix for s in afrb_sites(supernet)]


def check_design(supernet: NetworkSpec, design: Design) -> None:
    n = len(afrb_sites(supernet))
    if n == 0:
        raise SpaceError(f"{supernet.name} has no AFRB sites; the hardware-aware search needs a PReLU SuperNet "
                         "such as ran_e_supernet")
    if len(design.choices) != n:
        raise SpaceError(f"{supernet.name} has {n} AFRB sites, the design gives {len(design.choices)} choices")


def design_spec(supernet: NetworkSpec, design: Design, name: Optional[str] = None,
                description: str = "") -> NetworkSpec:
    """The deployable spec of ``design``: each AFRB as an IBN or collapsed block with its kernel and
    activation; the head (and anything else inheriting the network activation) uses the head's."""
    check_design(supernet, design)
    by_prefix = dict(zip(sites(supernet), design.choices))
    flags = [c.form == "collapsed" for c in design.choices]
    realized = realize_afrbs(supernet, flags, name=name or supernet.name, activation=design.head_activation,
                             description=description or supernet.description)

    def apply(site):
        choice = by_prefix.get(site.prefix)
        if choice is None:
            return site.block
        return site.block.replace(kernel=choice.kernel, activation=activations.canonical(choice.activation))

    return map_blocks(realized, apply)


def design_of(supernet: NetworkSpec, spec: NetworkSpec) -> Design:
    """The design a deployable spec of this SuperNet's layout stands for (e.g. RAN-e-GT's), or SpaceError."""
    want = {s.prefix: s for s in afrb_sites(supernet)}
    got = {s.prefix: s for s in spec.sites}
    choices = []
    for prefix in sites(supernet):
        block = got.get(prefix).block if prefix in got else None
        if block is None or block.kind not in FORMS or block.channels != want[prefix].block.channels:
            raise SpaceError(f"{spec.name}: {prefix} is {block.kind if block else 'missing'}, not an IBN or collapsed "
                             f"block of {supernet.name}'s layout")
        act = activations.canonical(block.activation or spec.activation)
        choices.append(Choice(block.kind, block.kernel, act))
    head = [s.block for s in spec.sites if s.section == "head"]
    head_act = activations.canonical((head[0].activation if head else None) or spec.activation)
    return Design(tuple(choices), head_act)


def measurement_designs(n: int, choices: Sequence[Choice] = ALL_CHOICES) -> List[Tuple[str, Design]]:
    """The few networks whose Vela compiles fill the cost table: every site takes every choice in
    both contexts that change its cost (the next block starts with a fused lookup-table activation
    or not). One uniform network per choice, plus alternating ones (even/odd sites) for the other
    context: 12 + 2 x 12 = 36 networks for 16 sites, instead of one per (site, choice)."""
    lut = next((c for c in choices if c.lut), None)
    plain = next((c for c in choices if not c.lut), None)
    if lut is None or plain is None:
        raise SpaceError("the measured choices need one collapsed block with a lookup-table activation and one "
                         "without, e.g. collapsed-k3-hard_swish and ibn-k3-relu6")
    out = [(f"u-{c.key}", Design.uniform(c, n)) for c in choices]
    for c in choices:
        other = plain if c.lut else lut
        even = tuple(c if i % 2 == 0 else other for i in range(n))
        odd = tuple(other if i % 2 == 0 else c for i in range(n))
        out.append((f"e-{c.key}", Design(even, c.activation)))
        out.append((f"o-{c.key}", Design(odd, c.activation)))
    return out


def contexts(design: Design) -> List[bool]:
    """Per site: does the next site start with a fused lookup-table activation? (The head does not.)"""
    return [design.choices[i + 1].lut if i + 1 < len(design.choices) else False
            for i in range(len(design.choices))]
