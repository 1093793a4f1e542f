"""Discrete refinement of a RAN-e design (issue 15): the choices the paper made by hand in Sec. 2.5
(which blocks to collapse, kernel sizes, the activation), chosen to maximise the FPS a ``CostModel``
predicts on one target, under budgets on MACs (at most) and non-linear units (at least).

Both budgets are additive over sites (the profiler's per-layer rows, grouped by site), and the cycle
model is a chain (a site's cost depends on its own choice and on whether the next block starts with a
fused lookup-table activation). So the search is exact dynamic programming over the chain, with the
non-linear units of the suffix in the state (the unit budget holds exactly) and MACs priced by a
Lagrange multiplier ``cycles + mu * MACs`` over a grid of ``mu`` (mu = 0 first: if that design fits the
MAC budget it is the exact optimum), followed by a local search (single-site and head changes, then
two-site changes, until nothing improves) ranked by budget violation, then cycles. ``allowed``
restricts each site's choices, e.g. to the blocks the PReLU search collapsed (its accuracy signal): a
block may only be collapsed where the search did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ran_keras.errors import RanError
from ran_keras.search.hwcost import CostModel
from ran_keras.search.hwspace import ACTIVATIONS, ALL_CHOICES, Choice, Design, design_spec, sites
from ran_keras.spec import NetworkSpec


class RefineError(RanError, ValueError):
    """No design meets the budgets, or the inputs do not fit together."""


@dataclass
class SiteBudgets:
    """MACs and non-linear units: a constant part plus one value per (site, choice); head by activation."""
    base_macs: int
    base_units: int
    macs: List[Dict[Choice, int]]
    units: List[Dict[Choice, int]]

    def totals(self, design: Design) -> Tuple[int, int]:
        return (self.base_macs + sum(m[c] for m, c in zip(self.macs, design.choices)),
                self.base_units + sum(u[c] for u, c in zip(self.units, design.choices)))


def site_budgets(supernet: NetworkSpec, input_size: int, classes: int,
                 choices: Sequence[Choice] = ALL_CHOICES) -> SiteBudgets:
    """Per-site MACs and units from the profiler of the 12 uniform designs (one per choice)."""
    from ran_keras.analysis.profiler import profile_spec
    prefixes = sites(supernet)
    macs: List[Dict[Choice, int]] = [{} for _ in prefixes]
    units: List[Dict[Choice, int]] = [{} for _ in prefixes]
    base = None
    for choice in choices:
        spec = design_spec(supernet, Design.uniform(choice, len(prefixes)), name="x")
        prof = profile_spec(spec, input_size=input_size, classes=classes)
        rest_m, rest_u = prof.macs, prof.nonlinear_units
        for i, p in enumerate(prefixes):
            rows = [r for r in prof.layers if r.name.startswith(f"x_{p}_")]
            macs[i][choice] = sum(r.macs for r in rows)
            units[i][choice] = sum(r.nonlinear_units for r in rows)
            rest_m -= macs[i][choice]
            rest_u -= units[i][choice]
        base = base or (rest_m, rest_u)
        if (rest_m, rest_u) != base:
            raise RefineError(f"{supernet.name}: the layers outside the AFRB sites change with the choices; "
                              "MACs and units are not additive over sites")
    return SiteBudgets(base[0], base[1], macs, units)


@dataclass
class Candidate:
    design: Design
    cycles: float
    fps: float
    macs: int
    units: int

    def to_dict(self):
        return {"design": self.design.to_dict(), "cycles": self.cycles, "fps": self.fps, "macs": self.macs,
                "nonlinear_units": self.units}


@dataclass
class Refinement:
    best: Candidate
    front: List[Candidate] = field(default_factory=list)   # feasible designs seen, for the Pareto plot
    evaluated: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.evaluated / self.seconds if self.seconds > 0 else float("inf")


def _dp(model: CostModel, budgets: SiteBudgets, allowed: Sequence[Sequence[Choice]], head: str, mu: float,
        min_units: float) -> Optional[Design]:
    """The design minimising cycles + mu * MACs with at least ``min_units`` non-linear units, exactly:
    dynamic programming over the chain of sites with the suffix's unit count as part of the state
    (units are small integers after dividing by their gcd). None if no design has enough units."""
    import math
    import numpy as np
    n = len(allowed)
    g = 0
    for i in range(n):
        for c in allowed[i]:
            g = math.gcd(g, int(budgets.units[i][c]))
    g = g or 1
    units = [{c: int(budgets.units[i][c]) // g for c in allowed[i]} for i in range(n)]
    size = sum(max(u.values()) for u in units) + 1
    inf = float("inf")

    def local(i, c, lut):
        return model.site_cost(i, c, lut) + mu * budgets.macs[i][c]

    cost: List[Dict[Choice, np.ndarray]] = [dict() for _ in range(n)]
    link: List[Dict[Choice, Tuple[np.ndarray, np.ndarray]]] = [dict() for _ in range(n)]
    for i in range(n - 1, -1, -1):
        if i == n - 1:
            tails = {False: (np.where(np.arange(size) == 0, 0.0, inf), np.full(size, -1))}
        else:
            tails = {}
            for lut in (False, True):
                opts = [c for c in allowed[i + 1] if c.lut == lut]
                if opts:
                    stack = np.stack([cost[i + 1][c] for c in opts])
                    arg = stack.argmin(axis=0)
                    tails[lut] = (stack[arg, np.arange(size)], np.array([allowed[i + 1].index(opts[k]) for k in arg]))
        for c in allowed[i]:
            best, pick = np.full(size, inf), np.full(size, -1)
            for lut, (arr, idx) in tails.items():
                cand = arr + local(i, c, lut)
                better = cand < best
                best[better], pick[better] = cand[better], idx[better]
            shift = units[i][c]
            cost[i][c] = np.concatenate([np.full(shift, inf), best[:size - shift]])
            link[i][c] = np.concatenate([np.full(shift, -1), pick[:size - shift]])
    need = max(0, math.ceil((min_units - budgets.base_units) / g))
    stem = model.table.stem
    best_total, start = inf, None
    for c in allowed[0]:
        arr = cost[0][c][need:] + stem["lut" if c.lut else "plain"]
        if arr.size and arr.min() < best_total:
            best_total, start = float(arr.min()), (c, need + int(arr.argmin()))
    if start is None or not math.isfinite(best_total):
        return None
    out, (c, s) = [], start
    for i in range(n):
        out.append(c)
        nxt = int(link[i][c][s])
        s -= units[i][c]
        c = allowed[i + 1][nxt] if i + 1 < n else None
    return Design(tuple(out), head)


def refine(model: CostModel, budgets: SiteBudgets, *, max_macs: float, min_units: float,
           allowed: Optional[Sequence[Sequence[Choice]]] = None, heads: Sequence[str] = ACTIVATIONS,
           grid: int = 24, progress: Callable[[str], None] = lambda m: None) -> Refinement:
    """The fastest predicted design within the budgets (see the module docstring)."""
    t0 = time.perf_counter()
    n = len(model.table.sites)
    allowed = [list(a) for a in (allowed or [model.choices] * n)]
    if len(allowed) != n or any(not a for a in allowed):
        raise RefineError(f"allowed choices: need a non-empty list for each of the {n} sites")
    seen: Dict[Design, Candidate] = {}

    def price(d: Design) -> Candidate:
        if d not in seen:
            m, u = budgets.totals(d)
            cyc = model.cycles(d)
            seen[d] = Candidate(d, cyc, model.table.core_clock / cyc, m, u)
        return seen[d]

    ref = Design.uniform(allowed[0][0], n)
    ref_macs = budgets.totals(ref)[0]
    scale_m = model.cycles(ref) / max(ref_macs, 1)
    multipliers = [0.0] + [scale_m * 2 ** (k / 3 - 6) for k in range(grid)]

    def violation(c: Candidate) -> float:
        return max(0.0, c.macs - max_macs) / max(max_macs, 1) + max(0.0, min_units - c.units) / max(min_units, 1)

    def rank(c: Candidate):
        return (violation(c), c.cycles)

    lagrangian = []
    for head in heads:
        for mu in multipliers:
            design = _dp(model, budgets, allowed, head, mu, min_units)
            if design is not None:
                lagrangian.append(price(design))
    by_rank = sorted({id(c): c for c in lagrangian}.values(), key=rank)
    progress(f"refine: {len(by_rank)} distinct Lagrangian designs, "
             f"{sum(1 for c in by_rank if violation(c) == 0)} within the budgets")
    best = None
    for start in by_rank[:6]:
        cand = _local_search(start, allowed, heads, price, rank)
        if best is None or rank(cand) < rank(best):
            best = cand
    if best is None or violation(best) > 0:
        raise RefineError(f"no design meets MACs <= {max_macs:,.0f} and non-linear units >= {min_units:,.0f} "
                          f"with the allowed choices (the most units possible: {_max_units(budgets, allowed):,})")
    front = [c for c in seen.values() if c.macs <= max_macs]
    return Refinement(best, front, len(seen), time.perf_counter() - t0)


def _max_units(budgets: SiteBudgets, allowed) -> int:
    return budgets.base_units + sum(max(u[c] for c in a) for u, a in zip(budgets.units, allowed))


def _moves(d: Design, allowed, heads, pairs: bool):
    for h in heads:
        if h != d.head_activation:
            yield Design(d.choices, h)
    for i, options in enumerate(allowed):
        for c in options:
            if c != d.choices[i]:
                yield Design(d.choices[:i] + (c,) + d.choices[i + 1:], d.head_activation)
    if pairs:
        for i, j in ((i, j) for i in range(len(allowed)) for j in range(i + 1, len(allowed))):
            for a in allowed[i]:
                for b in allowed[j]:
                    if a != d.choices[i] and b != d.choices[j]:
                        ch = list(d.choices)
                        ch[i], ch[j] = a, b
                        yield Design(tuple(ch), d.head_activation)


def _local_search(start: Candidate, allowed, heads, price, rank) -> Candidate:
    """Best improvement under ``rank`` (budget violation, then cycles): single-site and head changes until
    none improves, then one round of two-site changes; repeated until neither improves."""
    cur = start
    pairs = False
    while True:
        best = min((price(d) for d in _moves(cur.design, allowed, heads, pairs)), key=rank, default=cur)
        if rank(best) < rank(cur):
            cur, pairs = best, False
        elif not pairs:
            pairs = True
        else:
            return cur


def allowed_from_collapse(collapse: Sequence[bool], kernels: Sequence[int] = (3, 5, 7),
                          activations: Sequence[str] = ACTIVATIONS) -> List[List[Choice]]:
    """Per site: IBN always; collapsed only where the PReLU search collapsed the block."""
    out = []
    for flag in collapse:
        forms = ("ibn", "collapsed") if flag else ("ibn",)
        out.append([Choice(f, k, a) for f in forms for k in kernels for a in activations])
    return out
