"""Vela in the loop (issue 15): a per-site cost table of a SuperNet's search space, measured from
Vela's per-layer output, and the additive cost model that prices a whole design from it.

Attribution. Vela's per-layer CSV names each operator after the TFLite tensor it writes, and the
builder names layers ``<model>_<site prefix>_<op>``, so a layer's name carries its site. One
exception is fixed here: a collapsed block starts with BN -> act, which the converter fuses into the
conv *before* it, so that conv is named after the next block's ``act``. Such a fused conv is
charged to the block that owns the conv (the previous site, or the stem). What the next block
changes about it (a fused lookup-table activation, 1 cycle per output element instead of a free
clamp) is the *context* of the owner's entry: ``lut`` or ``plain``.

Table: ``entries[site][choice][context]`` for the AFRB sites, ``stem[context]``,
``head[activation]`` and a constant ``tail`` (pooling, classifier, softmax). Filled from 36 designs
(``hwspace.measurement_designs``); each is exported to int8 once and compiled once per target.
Cached as JSON keyed by the SuperNet spec, the target, Vela's version and the export settings.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ran_keras import fileio
from ran_keras.search.hwspace import ALL_CHOICES, Choice, Design, contexts, design_spec, measurement_designs, sites
from ran_keras.spec import NetworkSpec

FORMAT = "ran-keras-hw-costtable"
VERSION = 1
CONTEXTS = ("plain", "lut")
#: fused convs that a collapsed block's leading BN -> act is named after (charged to the previous unit)
LEADING_OPS = ("act", "pre_bn", "sub1_act", "sub1_pre_bn")
CONV_OPS = ("Conv2D", "DepthwiseConv2D")


@dataclass(frozen=True)
class ExportSettings:
    """How each design is exported before Vela sees it (the hwtable's defaults)."""
    input_size: int = 224
    classes: int = 1000
    seed: int = 0
    calibration: str = "photos"
    samples: int = 8
    per_channel: bool = True


def ctx_name(lut: bool) -> str:
    return "lut" if lut else "plain"


# --- attribution ---------------------------------------------------------------------------------

def units(spec: NetworkSpec) -> Tuple[List[str], Dict[str, str]]:
    """The cost units in network order ('stem', the site prefixes, 'head') and {layer prefix: unit}."""
    order, owner = ["stem"], {}
    for s in spec.sites:
        unit = s.section if s.section in ("stem", "head") else s.prefix
        owner[s.prefix] = unit
        if unit not in order:
            order.append(unit)
    if "head" not in order:
        order.append("head")
    return order, owner


def attribute(layers, spec: NetworkSpec) -> Dict[str, int]:
    """Vela's per-layer cycles summed per unit (stem, each site, head, 'tail' for the rest)."""
    order, owner = units(spec)
    pattern = re.compile(re.escape(spec.name) + r"_(" + "|".join(sorted(map(re.escape, owner), key=len, reverse=True))
                         + r")_([A-Za-z0-9_]+)")
    out = {u: 0 for u in order}
    out["tail"] = 0
    for layer in layers:
        m = pattern.search(layer.name)
        if m is None:
            out["tail"] += layer.cycles
            continue
        unit, op = owner[m.group(1)], m.group(2)
        if op in LEADING_OPS and layer.op in CONV_OPS and unit not in ("stem", "head"):
            unit = order[order.index(unit) - 1]
        out[unit] += layer.cycles
    return out


# --- the table -----------------------------------------------------------------------------------

@dataclass
class CostTable:
    """Measured cycles per unit and choice on one target (see the module docstring)."""
    supernet: str
    target: str
    core_clock: float
    sites: List[str]
    entries: Dict[str, Dict[str, Dict[str, float]]]
    stem: Dict[str, float]
    head: Dict[str, float]
    tail: float
    choices: List[str] = field(default_factory=lambda: [c.key for c in ALL_CHOICES])
    key: str = ""
    vela_version: Optional[str] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    spread: float = 0.0           # largest relative disagreement of repeated observations of one entry
    measured: Dict[str, int] = field(default_factory=dict)   # design name -> cycles_total
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), format=FORMAT, version=VERSION)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CostTable":
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        return cls(**fields)

    def missing(self) -> List[str]:
        last = self.sites[-1] if self.sites else None
        return [f"{s}/{c}/{x}" for s in self.sites for c in self.choices for x in CONTEXTS
                if x not in self.entries.get(s, {}).get(c, {}) and not (s == last and x == "lut")]


def build_table(observations: Sequence[Tuple[Design, Dict[str, int]]], site_names: Sequence[str],
                **meta) -> CostTable:
    """A table from (design, cycles per unit) observations; repeated entries are averaged."""
    acc: Dict[Tuple[str, ...], List[float]] = {}

    def add(key, value):
        acc.setdefault(key, []).append(float(value))

    for design, per_unit in observations:
        ctx = contexts(design)
        for site, choice, lut in zip(site_names, design.choices, ctx):
            add(("site", site, choice.key, ctx_name(lut)), per_unit[site])
        add(("stem", ctx_name(design.choices[0].lut)), per_unit["stem"])
        add(("head", design.head_activation), per_unit["head"])
        add(("tail",), per_unit["tail"])
    entries: Dict[str, Dict[str, Dict[str, float]]] = {s: {} for s in site_names}
    stem: Dict[str, float] = {}
    head: Dict[str, float] = {}
    tail = 0.0
    spread = 0.0
    for key, values in acc.items():
        mean = sum(values) / len(values)
        if mean > 0:
            spread = max(spread, (max(values) - min(values)) / mean)
        if key[0] == "site":
            entries[key[1]].setdefault(key[2], {})[key[3]] = mean
        elif key[0] == "stem":
            stem[key[1]] = mean
        elif key[0] == "head":
            head[key[1]] = mean
        else:
            tail = mean
    return CostTable(sites=list(site_names), entries=entries, stem=stem, head=head, tail=tail, spread=spread, **meta)


class CostModel:
    """Predicts a design's cycles (and FPS) on the table's target: the sum of its units' entries."""

    def __init__(self, table: CostTable):
        missing = table.missing()
        if missing:
            raise ValueError(f"cost table of {table.supernet} on {table.target} lacks {len(missing)} entries, "
                             f"e.g. {missing[0]}")
        self.table = table
        self.choices = tuple(Choice.parse(k) for k in table.choices)
        # the last site is followed by the head, never by a fused LUT: its 'lut' entry is never read
        self._site = [[[table.entries[s][c.key].get(x, table.entries[s][c.key]["plain"]) for x in CONTEXTS]
                       for c in self.choices] for s in table.sites]
        self._index = {c: i for i, c in enumerate(self.choices)}

    def cycles(self, design: Design) -> float:
        t = self.table
        if len(design.choices) != len(t.sites):
            raise ValueError(f"{t.supernet} has {len(t.sites)} sites, the design {len(design.choices)} choices")
        try:
            idx = [self._index[c] for c in design.choices]
        except KeyError as err:
            raise ValueError(f"choice {err.args[0].key} is not in the cost table of {t.supernet} on {t.target}; "
                             f"it has {', '.join(t.choices)}") from None
        nxt = [design.choices[i + 1].lut for i in range(len(idx) - 1)] + [False]
        total = t.stem[ctx_name(design.choices[0].lut)] + t.head[design.head_activation] + t.tail
        return total + sum(self._site[i][j][int(lut)] for i, (j, lut) in enumerate(zip(idx, nxt)))

    def fps(self, design: Design) -> float:
        return self.table.core_clock / self.cycles(design)

    def site_cost(self, i: int, choice, next_lut: bool) -> float:
        return self._site[i][self._index[choice]][int(next_lut)]


# --- measuring -----------------------------------------------------------------------------------

def table_key(supernet: NetworkSpec, target, settings: ExportSettings, choices: Sequence[Choice] = ALL_CHOICES) -> str:
    from ran_keras.export.hwtable import software_versions
    payload = {"format": FORMAT, "version": VERSION, "spec": supernet.to_dict(), "target": target.to_dict(),
               "choices": [c.key for c in choices],
               "settings": asdict(settings), "software": software_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Compiler:
    """Exports designs to int8 (cached .tflite, keyed like ``ran hwtable``'s) and compiles them with Vela."""

    def __init__(self, supernet: NetworkSpec, settings: ExportSettings, work_dir, say: Callable[[str], None] = print):
        self.supernet, self.settings, self.work = supernet, settings, Path(work_dir)
        self.say = say

    def tflite(self, spec: NetworkSpec) -> Path:
        from ran_keras.export import hwtable
        from ran_keras.export.settings import Settings
        s = self.settings
        cfg = Settings(models=(spec.name,), targets=(), input_size=s.input_size, classes=s.classes, seed=s.seed,
                       calibration=s.calibration, samples=s.samples, per_channel=s.per_channel, compare=False)
        spec_dict = spec.to_dict()
        key = hwtable.cache_key(spec_dict, cfg, hwtable.software_versions())
        path = self.work / "tflite" / f"{spec.name}.tflite"
        job = hwtable.ConvertJob(spec.name, spec_dict, s.input_size, s.classes, s.seed, s.calibration, s.samples,
                                 s.per_channel, False, str(path), key)
        if job.cached() is None:
            t0 = time.perf_counter()
            hwtable.convert(job)
            self.say(f"  exported {spec.name} in {time.perf_counter() - t0:.1f} s")
        return path

    def compile(self, spec: NetworkSpec, target):
        from ran_keras.export.vela import resolve_target, run_vela
        tgt = resolve_target(target)
        return run_vela(self.tflite(spec), tgt, self.work / "vela" / tgt.name / spec.name)

    def design(self, name: str, design: Design) -> NetworkSpec:
        return design_spec(self.supernet, design, name=name)


def measure_table(supernet: NetworkSpec, target, settings: ExportSettings = ExportSettings(), work_dir="out/hwsearch",
                  *, say: Callable[[str], None] = print, cache: bool = True,
                  compiler: Optional[Compiler] = None, choices: Sequence[Choice] = ALL_CHOICES) -> CostTable:
    """The cost table of ``supernet`` on ``target`` (a name or Target), from the cache when its key matches."""
    from ran_keras.export.vela import resolve_target, vela_version
    tgt = resolve_target(target)
    key = table_key(supernet, tgt, settings, choices)
    path = Path(work_dir) / "tables" / f"{supernet.name}_{tgt.name}_{settings.input_size}_{key[:12]}.json"
    if cache and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") == key:
            say(f"cost table {path} (cached)")
            return CostTable.from_dict(data)
    comp = compiler or Compiler(supernet, settings, work_dir, say)
    site_names = sites(supernet)
    designs = measurement_designs(len(site_names), choices)
    observations, measured = [], {}
    t0 = time.perf_counter()
    clock = 0.0
    for i, (label, design) in enumerate(designs):
        spec = comp.design(f"{supernet.name}_{label.replace('-', '_')}", design)
        rep = comp.compile(spec, tgt)
        per_unit = attribute(rep.layers, spec)
        if sum(per_unit.values()) != rep.cycles_total:
            raise RuntimeError(f"{spec.name}: per-layer cycles sum to {sum(per_unit.values())}, Vela's total is "
                               f"{rep.cycles_total}; the attribution lost layers")
        observations.append((design, per_unit))
        measured[label] = rep.cycles_total
        clock = rep.core_clock
        say(f"  [{i + 1}/{len(designs)}] {tgt.name} {label}: {rep.cycles_total:,} cycles")
    table = build_table(observations, site_names, supernet=supernet.name, target=tgt.name, core_clock=clock, key=key,
                        vela_version=vela_version(), settings=asdict(settings), measured=measured,
                        choices=[c.key for c in choices],
                        seconds=time.perf_counter() - t0)
    fileio.write_text(path, json.dumps(table.to_dict(), indent=1) + "\n")
    say(f"cost table {path}: {len(designs)} designs in {table.seconds:.0f} s, spread {100 * table.spread:.2f}%")
    return table


# --- validation ----------------------------------------------------------------------------------

def random_designs(n: int, sites_count: int, seed: int = 0) -> List[Tuple[str, Design]]:
    """``n`` seeded random designs (uniform over the choices per site and the head activation)."""
    import random
    rng = random.Random(seed)
    out = []
    for i in range(n):
        choices = tuple(rng.choice(ALL_CHOICES) for _ in range(sites_count))
        out.append((f"random{i}", Design(choices, rng.choice(("relu6", "hard_swish")))))
    return out


@dataclass
class Check:
    """One held-out design: the model's prediction against a full Vela compile."""
    name: str
    predicted: float
    measured: int
    fps_predicted: float
    fps_measured: float

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), error=self.error)


def validate(model: CostModel, designs: Sequence[Tuple[str, Design]], compiler: Compiler, target,
             say: Callable[[str], None] = print) -> List[Check]:
    """Predict and compile each design (full Vela compiles); the error of the model per design."""
    from ran_keras.export.vela import resolve_target
    tgt = resolve_target(target)
    out = []
    for name, design in designs:
        spec = compiler.design(f"{model.table.supernet}_{name}", design)
        rep = compiler.compile(spec, tgt)
        check = Check(name, model.cycles(design), rep.cycles_total, model.fps(design), rep.inferences_per_second)
        say(f"  {tgt.name} {name}: predicted {check.predicted:,.0f}, Vela {check.measured:,} cycles "
            f"({100 * check.error:+.4f}%)")
        out.append(check)
    return out


def pricing_rate(model: CostModel, designs: Sequence[Design], repeat: int = 3) -> float:
    """Designs priced per second by ``model.cycles`` (best of ``repeat`` passes over ``designs``)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for d in designs:
            model.cycles(d)
        best = min(best, time.perf_counter() - t0)
    return len(designs) / best if best > 0 else float("inf")


# --- the hardware-aware penalty's weights --------------------------------------------------------

def collapse_savings(model: CostModel, activation: str = "hard_swish", kernel: int = 3) -> List[float]:
    """Per site (network order): predicted cycles saved by collapsing it instead of keeping an IBN
    (same kernel and activation, the next block's context held plain)."""
    from ran_keras.search.hwspace import Choice
    ibn, col = Choice("ibn", kernel, activation), Choice("collapsed", kernel, activation)
    return [model.site_cost(i, ibn, False) - model.site_cost(i, col, False) for i in range(len(model.table.sites))]


def collapse_weights(model: CostModel, activation: str = "hard_swish", kernel: int = 3) -> List[float]:
    """The c_i of the hardware-aware penalty: savings clipped at 0 and scaled to mean 1, so lambda
    means the same as in the plain search (all c_i = 1) and a block whose collapse saves nothing is
    not pulled at all."""
    savings = [max(0.0, s) for s in collapse_savings(model, activation, kernel)]
    mean = sum(savings) / len(savings) if savings else 0.0
    return [s / mean for s in savings] if mean > 0 else [1.0] * len(savings)
