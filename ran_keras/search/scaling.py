"""RAN-i's training-free scaling (paper Sec. 3.3): pick the width/depth multipliers with the most
NN-Mass inside a MACs/params budget.

For a base ConvNeXt-family spec, candidates ``(wm, dm)`` have widths ``round(w * wm)`` and depths
``round(d * dm)`` (``scale_width`` / ``scale_depth`` with 'round'). Their params, MACs, NN-Mass
and non-linear units are computed analytically for all candidates at once with numpy, from the
same per-layer cost functions the profiler uses (``ran_keras.analysis.profiler``) and the NN-Mass block
formula (``ran_keras.analysis.nnmass``); tests check them against ``profile_spec``/``nn_mass`` of the
materialised specs and against built Keras models.

A candidate is inside a budget when each given target (MACs, params) is within ``tolerance`` of
it (a band, as the paper's chosen models sit around their budgets). Inside each budget the
candidates are ranked by NN-Mass. Both costs grow like ``dm * wm^2`` while NN-Mass grows like
``dm * wm``, so at a fixed budget NN-Mass favours deep, narrow networks: the unconstrained winner
sits at the top of the depth range. Corollary 1 says NN-Mass stops mattering when width gets too
low; ``min_width`` (channels of the narrowest stage) is that constraint.
"""

from __future__ import annotations

import csv
import io as _io
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras import fileio
from ran_keras.errors import RanError
from ran_keras.analysis.nnmass import block_mass
from ran_keras.analysis.profiler import block_rows, profile_spec, top_rows
from ran_keras.report import fmt_count
from ran_keras.spec import NetworkSpec, scale_depth, scale_width, scale_width_depth, stage_depths

from ran_keras.search.defaults import DEFAULT_SAMPLES, MAX_CANDIDATES, PAPER_BUDGETS, PAPER_DM, PAPER_WM  # noqa: F401

_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_COUNT_RE = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)")


class ScaleError(RanError, ValueError):
    """A bad sweep setting (budget, range, base model); the message names it and what is accepted."""


# --- parsing -----------------------------------------------------------------------------------

def parse_count(text: str, what: str = "budget") -> float:
    """'3.3e9', '3.3B', '3.3G', '21M', '4500M' -> a positive number."""
    raw = str(text).strip()
    m = _COUNT_RE.fullmatch(raw)
    if not m:
        raise ScaleError(f"{what}: cannot read {raw!r} as a count; write a number with an optional K, M, B "
                         f"or G suffix, e.g. 3.3e9, 3.3B or 21M")
    unit = m.group(2).upper()
    if unit not in _UNITS:
        raise ScaleError(f"{what}: unknown unit {m.group(2)!r} in {raw!r}; accepted: K, M, B (= G), T, or none")
    value = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise ScaleError(f"{what}: a budget must be a positive count, got {raw!r}")
    return value


def parse_counts(text: str, what: str = "budget") -> List[float]:
    """A comma-separated list of counts (one per budget)."""
    parts = [p for p in str(text).split(",")]
    if not any(p.strip() for p in parts):
        raise ScaleError(f"{what}: empty; give one count per budget, e.g. 3.3e9 or 3.3B,4.5B,8.5B")
    return [parse_count(p, what) for p in parts]


def parse_tolerance(text: str, what: str = "--tolerance") -> float:
    """'2%' or '0.02' -> 0.02 (a fraction in (0, 1))."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ScaleError(f"{what}: cannot read {raw!r}; write a percentage like 2% or a fraction like 0.02") from None
    if not 0 < value < 1:
        raise ScaleError(f"{what}: must be a fraction in (0, 1) or a percentage in (0%, 100%), got {raw!r}"
                         + ("; did you mean %s%%?" % raw if not raw.endswith("%") and 1 <= value < 100 else ""))
    return value


def parse_range(text: str, what: str) -> Tuple[float, float]:
    """'LO:HI' -> (lo, hi) with 0 < lo <= hi."""
    raw = str(text).strip()
    parts = raw.split(":")
    if len(parts) != 2:
        raise ScaleError(f"{what}: must be LO:HI, e.g. 0.25:1.6, got {raw!r}")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ScaleError(f"{what}: must be LO:HI with two numbers, e.g. 0.25:1.6, got {raw!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0:
        raise ScaleError(f"{what}: multipliers must be positive, got {raw!r}")
    if lo > hi:
        raise ScaleError(f"{what}: empty range {raw!r}; LO must not exceed HI")
    return lo, hi


def parse_widths(text: str, what: str = "--min-width") -> List[int]:
    """'64' or '64,76,87' (one per budget) -> channel counts."""
    raw = str(text).strip()
    try:
        values = [int(p) for p in raw.split(",")]
    except ValueError:
        raise ScaleError(f"{what}: must be a channel count or one per budget (e.g. 64 or 64,76,87), "
                         f"got {raw!r}") from None
    if not all(v >= 1 for v in values):
        raise ScaleError(f"{what}: channel counts must be positive, got {raw!r}")
    return values


def parse_grid(text: str, what: str = "--grid") -> Tuple[float, float]:
    """'STEP' or 'WSTEP,DSTEP' -> (width step, depth step)."""
    raw = str(text).strip()
    parts = raw.split(",")
    try:
        steps = [float(p) for p in parts]
    except ValueError:
        raise ScaleError(f"{what}: must be STEP or WSTEP,DSTEP, e.g. 0.01, got {raw!r}") from None
    if len(steps) not in (1, 2) or not all(math.isfinite(s) and s > 0 for s in steps):
        raise ScaleError(f"{what}: must be one or two positive steps (STEP or WSTEP,DSTEP), got {raw!r}")
    return (steps[0], steps[-1])


# --- budgets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """A hardware budget: MACs and/or params targets, each met within ``tolerance`` (relative),
    optionally with every stage at least ``min_width`` channels wide (Corollary 1)."""
    name: str
    macs: Optional[float]
    params: Optional[float]
    tolerance: float = 0.02
    min_width: Optional[int] = None

    def __post_init__(self):
        if self.macs is None and self.params is None:
            raise ScaleError(f"budget {self.name}: give a MACs or a params target (or both)")
        for what, value in (("MACs", self.macs), ("params", self.params)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ScaleError(f"budget {self.name}: {what} must be positive, got {value!r}")
        if not 0 < self.tolerance < 1:
            raise ScaleError(f"budget {self.name}: tolerance must be in (0, 1), got {self.tolerance!r}")
        if self.min_width is not None and (isinstance(self.min_width, bool) or not isinstance(self.min_width, int)
                                           or self.min_width < 1):
            raise ScaleError(f"budget {self.name}: min_width must be a positive number of channels, "
                             f"got {self.min_width!r}")

    def contains(self, macs, params) -> np.ndarray:
        """Which (MACs, params) pairs are within the targets (the width constraint aside)."""
        ok = np.ones(np.shape(macs), dtype=bool)
        if self.macs is not None:
            ok &= np.abs(np.asarray(macs, dtype=float) - self.macs) <= self.tolerance * self.macs
        if self.params is not None:
            ok &= np.abs(np.asarray(params, dtype=float) - self.params) <= self.tolerance * self.params
        return ok

    def admits(self, cand: "Candidates") -> np.ndarray:
        """Which candidates are inside the budget, width constraint included."""
        ok = self.contains(cand.macs, cand.params)
        if self.min_width is not None:
            ok &= cand.widths.min(axis=1) >= self.min_width
        return ok

    def describe(self) -> str:
        pct = f"±{100 * self.tolerance:g}%"
        parts = [f"MACs {fmt_count(self.macs)} {pct}" if self.macs else "",
                 f"params {fmt_count(self.params)} {pct}" if self.params else "",
                 f"narrowest stage >= {self.min_width}" if self.min_width else ""]
        return ", ".join(p for p in parts if p)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "macs": self.macs, "params": self.params, "tolerance": self.tolerance,
                "min_width": self.min_width}


def _per_budget(values: Optional[Sequence[Any]], n: int, what: str) -> List[Any]:
    values = list(values or [])
    if values and len(values) not in (1, n):
        raise ScaleError(f"{what} has {len(values)} values for {n} budgets; give one value per budget, or a "
                         f"single value for all")
    return (values * n if len(values) == 1 else values) or [None] * n


def _flag(name: str, sep: str) -> str:
    """A front end's spelling of an option: ``--min-width`` (``ran scale``, sep '-') or ``--min_width`` (absl)."""
    return "--" + name.replace("_", sep)


def make_budgets(macs: Optional[Sequence[float]], params: Optional[Sequence[float]], tolerance: float = 0.02,
                 names: Optional[Sequence[str]] = None, min_width=None, *, sep: str = "-") -> List[Budget]:
    """Pair MACs and params targets into budgets H1, H2, ... (a single value pairs with every other).

    ``min_width``: None, one channel count for every budget, or one per budget. ``sep``: how the
    messages spell multi-word options ('-': ``--min-width``, '_': absl's ``--min_width``).
    """
    if not macs and not params:
        raise ScaleError(f"give at least one budget: --macs and/or --params (e.g. --macs 3.3e9 --params 21e6), "
                         f"or {_flag('paper_budgets', sep)}")
    n = max(len(macs or []), len(params or []))
    macs, params = _per_budget(macs, n, "--macs"), _per_budget(params, n, "--params")
    widths = _per_budget([min_width] if isinstance(min_width, int) else min_width, n, _flag("min_width", sep))
    names = list(names) if names else [f"H{i + 1}" for i in range(n)]
    return [Budget(nm, m, p, tolerance, w) for nm, m, p, w in zip(names, macs, params, widths)]


def paper_budgets(tolerance: float = 0.02, min_width=None, *, sep: str = "-") -> List[Budget]:
    """H1/H2/H3 of Sec. 3.4: (3.3B MACs, 21M params), (4.5B, 28M), (8.5B, 50M)."""
    names, macs, params = zip(*PAPER_BUDGETS)
    return make_budgets(macs, params, tolerance, names, min_width, sep=sep)


def budgets_from_options(macs: Optional[Sequence[float]] = None, params: Optional[Sequence[float]] = None, *,
                         paper: bool = False, tolerance: float = 0.02, min_width=None,
                         sep: str = "-") -> List[Budget]:
    """The budgets a front end's options ask for (``ran scale`` and the absl experiment share this):
    ``paper`` (--paper-budgets) for H1/H2/H3, else the --macs/--params lists."""
    if paper:
        if macs or params:
            raise ScaleError(f"{_flag('paper_budgets', sep)} sets --macs and --params itself; give one or the other")
        return paper_budgets(tolerance, min_width, sep=sep)
    return make_budgets(macs, params, tolerance, min_width=min_width, sep=sep)


def sweep_options(*, wm: Tuple[float, float] = PAPER_WM, dm: Tuple[float, float] = PAPER_DM,
                  samples: Optional[int] = None, seed: Optional[int] = None,
                  grid: Optional[Tuple[float, float]] = None) -> Dict[str, Any]:
    """Check a front end's sampling options (None: not given) and fill in the defaults; returns
    ``run_sweep``'s keyword arguments ``wm``, ``dm``, ``samples``, ``seed``, ``grid``.

    --samples and --grid exclude each other, --seed applies to --samples only, and the sweep may
    not exceed MAX_CANDIDATES. Defaults: DEFAULT_SAMPLES random samples with seed 0.
    """
    if grid is not None:
        if samples is not None:
            raise ScaleError("--samples and --grid exclude each other: --grid evaluates every grid point; "
                             "give one or the other")
        if seed is not None:
            raise ScaleError("--seed applies to --samples; a --grid sweep is not random")
        _grid_shape(wm, dm, grid)
        return {"wm": wm, "dm": dm, "samples": None, "seed": 0, "grid": grid}
    samples = DEFAULT_SAMPLES if samples is None else samples
    seed = 0 if seed is None else seed
    _check_samples(samples)
    _check_seed(seed)
    return {"wm": wm, "dm": dm, "samples": samples, "seed": seed, "grid": None}


# --- the family, analytically -------------------------------------------------------------------

def _depth_fields(block) -> Dict[str, Any]:
    """A block's fields as stage_depths compares them (drop_path aside)."""
    return {k: v for k, v in block.values.items() if k != "drop_path"}


@dataclass(frozen=True)
class ConvNeXtFamily:
    """A base spec the sweep can scale: every stage is an optional first block (a downsampling
    layer, or a first block that changes stride or width) and a run of identical blocks that keep
    their input's shape (ConvNeXt, RAN-i, the co-design nets, ResNets; any block kind). Stem and
    head blocks are costed once.

    Candidate costs come from the profiler's per-layer rows (``analysis.profiler.block_rows``, the
    IR ops' cost rules) and NN-Mass's per-block terms, evaluated once per distinct set of rounded
    widths and combined with the depths in numpy: the sweep cannot disagree with ``ran profile``.
    """
    base: NetworkSpec
    unit: NetworkSpec               # the base with every run cut to one block
    channels: Tuple[int, ...]       # the distinct channel values width scaling multiplies

    @classmethod
    def from_spec(cls, spec: NetworkSpec) -> "ConvNeXtFamily":
        def refuse(path: str, why: str):
            raise ScaleError(f"--base {spec.name}: {path}: {why}; the sweep scales specs whose stages are an optional "
                             f"first block (a downsampling layer) and a run of identical blocks, e.g. convnext_tiny")

        for i, (stage, n) in enumerate(zip(spec.stages, stage_depths(spec))):
            block, prefix = stage[-1], stage[:len(stage) - n]
            for j, other in enumerate(prefix):
                if j == 0:
                    continue
                if other.kind == block.kind:
                    last, this = _depth_fields(block), _depth_fields(other)
                    keys = [k for k in sorted(set(last) | set(this)) if this.get(k) != last.get(k)]
                    if not keys:        # like the last block; a later one breaks the run
                        continue
                    mine = ", ".join(f"{k} {this.get(k)!r}" for k in keys)
                    theirs = ", ".join(f"{k} {last.get(k)!r}" for k in keys)
                    refuse(f"stages[{i}][{j}]", f"this {block.kind!r} block has {mine} where stages[{i}][{len(stage) - 1}] "
                                                f"has {theirs}; a stage's {block.kind!r} blocks must be identical "
                                                f"(drop_path aside)")
                refuse(f"stages[{i}][{j}]", f"is a {other.kind!r} block; a stage may start with one block of another "
                                            f"kind, then only {block.kind!r} blocks")
        unit = scale_depth(spec, 1e-9)
        for site in unit.sites:
            if site.section == "stage" and site.index == len(unit.stages[site.stage - 1]):
                rows, out = block_rows(unit, site, (64, 64, site.in_channels))
                if out != (64, 64, site.in_channels):
                    refuse(site.path, f"a {site.block.kind!r} block that changes its input's shape cannot be repeated")
        values = sorted({b.get(k) for s in (spec.stem, *spec.stages) for b in s for k in ("channels", "mid_channels")
                         if b.get(k) is not None})
        return cls(spec, unit, tuple(values))

    @property
    def widths(self) -> np.ndarray:
        return np.array([stage[-1].channels for stage in self.base.stages])

    @property
    def depths(self) -> np.ndarray:
        return np.array(stage_depths(self.base))

    def evaluate(self, wm, dm, *, input_size: Optional[int] = None, classes: int = 1000) -> "Candidates":
        """Params, MACs, NN-Mass and non-linear units of every candidate (numpy arrays, one row each)."""
        wm = np.atleast_1d(np.asarray(wm, dtype=float))
        dm = np.atleast_1d(np.asarray(dm, dtype=float))
        size = input_size or self.base.input_size
        rnd = lambda x: np.maximum(1, np.floor(x + 0.5)).astype(np.int64)  # noqa: E731 - ROUNDINGS['round']
        widths = rnd(self.widths[None, :] * wm[:, None])
        depths = rnd(self.depths[None, :] * dm[:, None])
        keys = rnd(np.asarray(self.channels)[None, :] * wm[:, None])
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        once, per_block = zip(*(self._unit_costs(float(wm[i]), size, classes) for i in first))
        once, per_block = np.asarray(once)[inverse.ravel()], np.asarray(per_block)[inverse.ravel()]
        totals = once + np.einsum("ns,nsk->nk", depths, per_block)
        return Candidates(wm, dm, widths, depths, totals[:, 0].astype(np.int64), totals[:, 1].astype(np.int64),
                          totals[:, 2], totals[:, 3].astype(np.int64))

    def _unit_costs(self, wm: float, size: int, classes: int):
        """(params, MACs, NN-Mass, units) of everything but the runs, and of one block of each stage's
        run, for the base scaled in width by ``wm``."""
        spec = scale_width(self.unit, wm, rounding="round", stem=True)
        shape = (size, size, spec.input_channels)
        once, per_block = np.zeros(4), np.zeros((len(spec.stages), 4))
        for site in spec.sites:
            rows, shape = block_rows(spec, site, shape)
            mass = block_mass(spec, site)
            cost = (sum(r.params for r in rows), sum(r.macs for r in rows), mass.mass, mass.nonlinear_units)
            is_run = site.section == "stage" and site.index == len(spec.stages[site.stage - 1])
            if is_run:
                per_block[site.stage - 1] = cost
            else:
                once += cost
        top = top_rows(spec, shape[2], classes, spec.name)
        once += (sum(r.params for r in top), sum(r.macs for r in top), 0, 0)
        return once, per_block


@dataclass
class Candidates:
    """One row per candidate; ``widths``/``depths`` are (N, stages)."""
    wm: np.ndarray
    dm: np.ndarray
    widths: np.ndarray
    depths: np.ndarray
    params: np.ndarray
    macs: np.ndarray
    nn_mass: np.ndarray
    nonlinear_units: np.ndarray

    def __len__(self) -> int:
        return len(self.wm)

    def row(self, i: int) -> Dict[str, Any]:
        return {"wm": float(self.wm[i]), "dm": float(self.dm[i]), "widths": self.widths[i].tolist(),
                "depths": self.depths[i].tolist(), "params": int(self.params[i]), "macs": int(self.macs[i]),
                "nn_mass": float(self.nn_mass[i]), "nonlinear_units": int(self.nonlinear_units[i])}


# --- the sweep ---------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_samples(samples) -> None:
    if not _is_int(samples) or samples < 1:
        raise ScaleError(f"--samples must be a positive integer, got {samples!r}")
    if samples > MAX_CANDIDATES:
        raise ScaleError(f"--samples {samples:,} is more than the {MAX_CANDIDATES:,} candidates a sweep evaluates "
                         f"at once; give at most {MAX_CANDIDATES:,}")


def _check_seed(seed) -> None:
    if not _is_int(seed) or seed < 0:
        raise ScaleError(f"--seed must be an integer >= 0, got {seed!r}")


def _grid_shape(wm: Tuple[float, float], dm: Tuple[float, float], grid: Tuple[float, float]) -> Tuple[int, int]:
    """(width points, depth points) of a grid sweep; ScaleError above MAX_CANDIDATES."""
    shape = tuple(int(math.floor((hi - lo) / step + 1e-9)) + 1 for (lo, hi), step in zip((wm, dm), grid))
    if shape[0] * shape[1] > MAX_CANDIDATES:
        raise ScaleError(f"--grid {grid[0]:g},{grid[1]:g} over --wm {wm[0]:g}:{wm[1]:g} and --dm {dm[0]:g}:{dm[1]:g} "
                         f"makes {shape[0] * shape[1]:,} candidates ({shape[0]:,} x {shape[1]:,}), more than the "
                         f"{MAX_CANDIDATES:,} a sweep evaluates at once; use a larger step or narrower ranges "
                         f"(e.g. --grid 0.005,0.01 gives 271 x 197 over the paper's ranges)")
    return shape


def sample_multipliers(wm: Tuple[float, float], dm: Tuple[float, float], *, samples: Optional[int] = None,
                       seed: int = 0, grid: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``samples`` uniform random (wm, dm) pairs from ``seed`` (>= 0), or the full grid with steps ``grid``.

    At most MAX_CANDIDATES either way.
    """
    if grid is not None:
        _grid_shape(wm, dm, grid)
        axes = [np.round(np.arange(lo, hi + step / 2, step), 10) for (lo, hi), step in zip((wm, dm), grid)]
        axes = [a[a <= hi + 1e-12] for a, (_, hi) in zip(axes, (wm, dm))]
        w, d = np.meshgrid(axes[0], axes[1], indexing="ij")
        return w.ravel(), d.ravel()
    _check_samples(samples)
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    return rng.uniform(wm[0], wm[1], samples), rng.uniform(dm[0], dm[1], samples)


@dataclass
class BudgetResult:
    budget: Budget
    inside: int                  # candidates inside the budget (width constraint included)
    ranked: List[int]            # candidate indices, one per distinct architecture, best NN-Mass first

    @property
    def chosen(self) -> Optional[int]:
        return self.ranked[0] if self.ranked else None


@dataclass
class SweepResult:
    base: NetworkSpec
    candidates: Candidates
    budgets: List[BudgetResult]
    settings: Dict[str, Any]
    seconds: float               # time to evaluate every candidate analytically
    base_point: Dict[str, Any] = field(default_factory=dict)

    def chosen_spec(self, index: int, name: str, *, drop_path: Optional[float] = None,
                    description: str = "") -> NetworkSpec:
        """The spec of candidate ``index``: the base scaled by its (wm, dm)."""
        c = self.candidates
        spec = scale_width_depth(self.base, float(c.wm[index]), float(c.dm[index]), name=name, drop_path=drop_path,
                              description=description)
        return spec.replace(family="ran_i")

    @property
    def unmet(self) -> List[str]:
        """Names of the budgets no candidate meets."""
        return [b.budget.name for b in self.budgets if b.chosen is None]

    def unmet_message(self) -> str:
        """The error line of a sweep with unmet budgets ('' when every budget has a model)."""
        if not self.unmet:
            return ""
        return (f"no candidate meets budget {', '.join(self.unmet)} ({len(self.unmet)} of {len(self.budgets)}; "
                "why is in the report above): widen --tolerance, --wm/--dm or the sweep")

    def to_dict(self, top: int = 5) -> Dict[str, Any]:
        return {"base": self.base.name, "base_point": self.base_point, "settings": self.settings,
                "candidates": len(self.candidates), "evaluate_seconds": self.seconds,
                "budgets": [{**b.budget.to_dict(), "inside": b.inside, "distinct": len(b.ranked),
                             "top": [dict(self.candidates.row(i), rank=r + 1) for r, i in enumerate(b.ranked[:top])]}
                            for b in self.budgets]}


def run_sweep(base: NetworkSpec, budgets: Sequence[Budget], *, wm: Tuple[float, float] = PAPER_WM,
              dm: Tuple[float, float] = PAPER_DM, samples: Optional[int] = 800, seed: int = 0,
              grid: Optional[Tuple[float, float]] = None,
              input_size: Optional[int] = None, classes: int = 1000) -> SweepResult:
    """Evaluate every candidate, then rank those inside each budget by NN-Mass (ties: fewer MACs).

    Width floors (Corollary 1) come with the budgets (``Budget.min_width``).
    """
    family = ConvNeXtFamily.from_spec(base)
    w, d = sample_multipliers(wm, dm, samples=samples, seed=seed, grid=grid)
    start = time.perf_counter()
    cand = family.evaluate(w, d, input_size=input_size, classes=classes)
    seconds = time.perf_counter() - start
    results = []
    for budget in budgets:
        idx = np.flatnonzero(budget.admits(cand))
        idx = idx[np.lexsort((cand.macs[idx], -cand.nn_mass[idx]))]
        seen, ranked = set(), []
        for i in idx.tolist():
            key = (tuple(cand.widths[i]), tuple(cand.depths[i]))
            if key not in seen:
                seen.add(key)
                ranked.append(i)
        results.append(BudgetResult(budget, len(idx), ranked))
    base_eval = family.evaluate([1.0], [1.0], input_size=input_size, classes=classes)
    settings = {"wm": list(wm), "dm": list(dm), "samples": None if grid else samples, "seed": None if grid else seed,
                "grid": list(grid) if grid else None,
                "input_size": input_size or base.input_size, "classes": classes}
    return SweepResult(base, cand, results, settings, seconds, base_eval.row(0))


# --- outputs -----------------------------------------------------------------------------------

def candidates_csv(result: SweepResult) -> str:
    """Every candidate, one row, with a 0/1 column per budget (inside it, width constraint included)."""
    c = result.candidates
    inside = {b.budget.name: b.budget.admits(c).astype(int) for b in result.budgets}
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["wm", "dm", "widths", "depths", "params", "macs", "nn_mass", "nonlinear_units",
                     *[f"in_{name}" for name in inside]])
    for i in range(len(c)):
        writer.writerow([f"{c.wm[i]:.6f}", f"{c.dm[i]:.6f}", " ".join(map(str, c.widths[i])),
                         " ".join(map(str, c.depths[i])), int(c.params[i]), int(c.macs[i]), f"{c.nn_mass[i]:g}",
                         int(c.nonlinear_units[i]), *[int(v[i]) for v in inside.values()]])
    return buf.getvalue()


def plot_sweep(result: SweepResult, path, *, marks: Sequence[Tuple[str, float, float]] = ()) -> None:
    """NN-Mass vs MACs: every candidate, each budget's MACs band shaded, its chosen model starred.

    ``marks``: extra labelled points (label, MACs, NN-Mass), e.g. the paper's Table 7 models.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.candidates
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ax.scatter(c.macs / 1e9, c.nn_mass, s=4, color="0.75", label=f"{len(c)} candidates", rasterized=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, b in enumerate(result.budgets):
        color = colors[k % len(colors)]
        if b.budget.macs:
            lo, hi = (b.budget.macs * (1 - b.budget.tolerance), b.budget.macs * (1 + b.budget.tolerance))
            ax.axvspan(lo / 1e9, hi / 1e9, color=color, alpha=0.15, lw=0)
        idx = np.flatnonzero(b.budget.admits(c))
        ax.scatter(c.macs[idx] / 1e9, c.nn_mass[idx], s=10, color=color,
                   label=f"{b.budget.name}: {b.budget.describe()} ({len(idx)})")
        if b.chosen is not None:
            i = b.chosen
            ax.scatter([c.macs[i] / 1e9], [c.nn_mass[i]], marker="*", s=220, color=color, edgecolor="black", zorder=5)
            ax.annotate(f"{b.budget.name}: wm {c.wm[i]:.3f}, dm {c.dm[i]:.2f}", (c.macs[i] / 1e9, c.nn_mass[i]),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
    for label, macs, mass in marks:
        ax.scatter([macs / 1e9], [mass], marker="D", s=40, facecolor="none", edgecolor="black", zorder=6)
        ax.annotate(label, (macs / 1e9, mass), textcoords="offset points", xytext=(6, -12), fontsize=8)
    title = f"NN-Mass vs MACs, {result.base.name} scaled"
    size = result.settings["input_size"]
    ax.set(xlabel=f"MACs (billions, {size}x{size})", ylabel="NN-Mass", title=title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with fileio.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def check_output_names(base: NetworkSpec, prefix: Optional[str], drop_path: Optional[float], *,
                       sep: str = "-") -> None:
    """Raise ScaleError now (before any work) if the chosen specs' name prefix or drop_path is unusable."""
    from ran_keras.errors import SpecError
    if drop_path is not None and (isinstance(drop_path, bool) or not isinstance(drop_path, (int, float))
                                  or not 0 <= drop_path < 1):
        raise ScaleError(f"{_flag('drop_path', sep)} must be in [0, 1), got {drop_path!r}")
    if prefix is not None:
        try:
            base.replace(name=f"{prefix}_h1")
        except SpecError as err:
            raise ScaleError(f"--prefix {prefix!r} does not make a valid spec name: {err.detail}") from None


def write_outputs(result: SweepResult, *, csv_path=None, plot_path=None, spec_dir=None, prefix: Optional[str] = None,
                  drop_path: Optional[float] = None, marks=()) -> Dict[str, Any]:
    """Write the CSV, the plot and each budget's chosen spec (atomically); returns what was written.

    Check ``prefix`` and ``drop_path`` with ``check_output_names`` first (the front ends do, before
    the sweep): an unusable one fails here only after the CSV and plot are written.
    """
    written: Dict[str, Any] = {"specs": {}}
    if csv_path:
        written["csv"] = str(fileio.write_text(csv_path, candidates_csv(result)))
    if plot_path:
        plot_sweep(result, plot_path, marks=marks)
        written["plot"] = str(plot_path)
    if spec_dir:
        prefix = prefix or f"{result.base.name}_scaled"
        for b in result.budgets:
            if b.chosen is None:
                continue
            name = f"{prefix}_{b.budget.name.lower()}"
            row = result.candidates.row(b.chosen)
            spec = result.chosen_spec(b.chosen, name, drop_path=drop_path, description=(
                f"highest-NN-Mass candidate for {b.budget.name} ({b.budget.describe()}): {result.base.name} at "
                f"wm {row['wm']:.4f}, dm {row['dm']:.4f}"))
            prof = profile_spec(spec, input_size=result.settings["input_size"], classes=result.settings["classes"])
            if (prof.params, prof.macs) != (row["params"], row["macs"]):
                raise RuntimeError(f"analytic sweep and profiler disagree on {name}: {row['params']}/{row['macs']} vs "
                                   f"{prof.params}/{prof.macs}")
            written["specs"][b.budget.name] = str(spec.save(Path(spec_dir) / f"{name}.json"))
    return written


DEPTH_NOTE = ("NN-Mass grows like dm*wm while MACs and params grow like dm*wm^2, so inside a budget the "
              "highest-NN-Mass candidates are the deepest and narrowest the ranges allow. Corollary 1: NN-Mass "
              "matters less when width is low; {min_width} C keeps every stage at least C channels wide.")


def nothing_fits(result: SweepResult, b: BudgetResult, sep: str = "-") -> str:
    """Why no candidate is inside budget ``b``: the MACs and params the candidates reach, what a
    width floor removed, and only the remedies that apply."""
    c, budget = result.candidates, b.budget
    lines = [f"the {len(c)} candidates reach MACs {fmt_count(c.macs.min())}-{fmt_count(c.macs.max())} and params "
             f"{fmt_count(c.params.min())}-{fmt_count(c.params.max())}"]
    fixes, out_of_reach = [], False
    meets = {}
    for what, target, values in (("MACs", budget.macs, c.macs), ("params", budget.params, c.params)):
        if target is None:
            continue
        lo, hi = target * (1 - budget.tolerance), target * (1 + budget.tolerance)
        meets[what] = int(np.count_nonzero(np.abs(values - target) <= budget.tolerance * target))
        if hi < values.min() or lo > values.max():
            out_of_reach = True
            where = "below" if hi < values.min() else "above"
            lines.append(f"{what} {fmt_count(target)} ±{100 * budget.tolerance:g}% ({fmt_count(lo)}-{fmt_count(hi)}) "
                         f"is {where} all of them")
    fit = budget.contains(c.macs, c.params)
    both = int(np.count_nonzero(fit))
    if out_of_reach:
        fixes.append("change the target, or move the --wm/--dm ranges (or --base) so that candidates reach it")
    elif len(meets) == 2 and both == 0 and all(meets.values()):
        lines.append(f"{meets['MACs']} meet the MACs target and {meets['params']} the params target, none both")
        fixes.append("widen --tolerance, or give only one of --macs/--params")
    elif both and budget.min_width is not None:
        widest = int(c.widths.min(axis=1)[fit].max())
        lines.append(f"{both} meet the targets but the width floor removed all of them: their narrowest stage has "
                     f"at most {widest} channels, the floor is {budget.min_width}")
        fixes.append(f"lower {_flag('min_width', sep)} to at most {widest}")
    else:
        lines.append(f"{', '.join(f'{n} meet the {w} target' for w, n in meets.items())}")
        fixes.append("use a finer --grid step or widen --tolerance" if result.settings["grid"]
                     else "sample more (--samples), use a --grid, or widen --tolerance")
    return "; ".join(lines) + ": " + "; ".join(fixes)


def format_report(result: SweepResult, top: int = 5, sep: str = "-") -> str:
    """The text report: the base, the search space, and each budget's top candidates. ``sep``: how
    options are spelled ('-': ``--min-width``; '_': absl's ``--min_width``)."""
    from ran_keras.report import table
    s, bp = result.settings, result.base_point
    lines = [f"base {result.base.name}: {fmt_count(bp['params'])} params, {fmt_count(bp['macs'])} MACs, "
             f"NN-Mass {bp['nn_mass']:g}, widths {bp['widths']}, depths {bp['depths']} "
             f"({s['input_size']}x{s['input_size']}, {s['classes']} classes)"]
    space = (f"grid with steps wm {s['grid'][0]:g}, dm {s['grid'][1]:g}" if s["grid"]
             else f"{s['samples']} random samples (seed {s['seed']})")
    lines.append(f"{len(result.candidates)} candidates: {space} over wm {s['wm'][0]:g}:{s['wm'][1]:g}, "
                 f"dm {s['dm'][0]:g}:{s['dm'][1]:g}; evaluated analytically in {1e3 * result.seconds:.1f} ms")
    for b in result.budgets:
        lines.append("")
        head = (f"{b.budget.name}: {b.budget.describe()}: {b.inside} of {len(result.candidates)} candidates inside, "
                f"{len(b.ranked)} distinct architectures")
        if not b.ranked:
            lines.append(f"{head} - none to rank: {nothing_fits(result, b, sep)}")
            continue
        lines.append(head)
        rows = []
        for r, i in enumerate(b.ranked[:top]):
            row = result.candidates.row(i)
            rows.append([r + 1, f"{row['wm']:.4f}", f"{row['dm']:.4f}", ",".join(map(str, row["widths"])),
                         ",".join(map(str, row["depths"])), fmt_count(row["params"]), fmt_count(row["macs"]),
                         f"{row['nn_mass']:g}", row["nonlinear_units"]])
        lines.append(table(["rank", "wm", "dm", "widths", "depths", "params", "MACs", "NN-Mass", "non-linear units"],
                           rows))
    lines += ["", DEPTH_NOTE.format(min_width=_flag("min_width", sep))]
    return "\n".join(lines)


def model_marks(models: Sequence[str], input_size: Optional[int] = None,
                classes: int = 1000) -> List[Tuple[str, float, float]]:
    """(name, MACs, NN-Mass) of registered models or spec files, to mark on the plot."""
    from ran_keras.analysis.nnmass import nn_mass
    from ran_keras.registry import resolve_spec
    out = []
    for model in models:
        spec = resolve_spec(model)
        out.append((spec.name, float(profile_spec(spec, input_size=input_size, classes=classes).macs),
                    nn_mass(spec).mass))
    return out
