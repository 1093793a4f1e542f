"""Discrete refinement of a RAN-e design (issue 15): the choices the paper made by hand in Sec. 2.5
(which blocks to collapse, kernel sizes, the activation), chosen to maximise the FPS a ``CostModel``
predicts on one target, under budgets on MACs (at most) and non-linear units (at least).

Both budgets are additive over sites (the profiler's per-layer rows, grouped by site), and the cycle
model is a chain (a site's cost depends on its own choice and on whether the next block starts with a
fused lookup-table activation). So the search is exact dynamic programming over the chain for a
Lagrangian objective ``cycles + mu * MACs - nu * units``, over a grid of multipliers, followed by a
local search (every single-site change and every head activation, repeated until nothing improves)
on the true constrained problem. ``allowed`` restricts each site's choices, e.g. to the blocks the
PReLU search collapsed (its accuracy signal): a block may only be collapsed where the search did.
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


def site_budgets(supernet: NetworkSpec, input_size: int, classes: int) -> SiteBudgets:
    """Per-site MACs and units from the profiler of the 12 uniform designs (one per choice)."""
    from ran_keras.analysis.profiler import profile_spec
    prefixes = sites(supernet)
    macs: List[Dict[Choice, int]] = [{} for _ in prefixes]
    units: List[Dict[Choice, int]] = [{} for _ in prefixes]
    base = None
    for choice in ALL_CHOICES:
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
        nu: float) -> Design:
    """The design minimising cycles + mu * MACs - nu * units exactly (Viterbi over the chain)."""
    n = len(allowed)

    def local(i, c, next_lut):
        return model.site_cost(i, c, next_lut) + mu * budgets.macs[i][c] - nu * budgets.units[i][c]

    # best[i][c]: the cheapest suffix from site i given site i takes c
    best: List[Dict[Choice, Tuple[float, Optional[Choice]]]] = [dict() for _ in range(n)]
    for c in allowed[-1]:
        best[-1][c] = (local(n - 1, c, False), None)
    for i in range(n - 2, -1, -1):
        for c in allowed[i]:
            nxt = min(allowed[i + 1], key=lambda d: local(i, c, d.lut) + best[i + 1][d][0])
            best[i][c] = (local(i, c, nxt.lut) + best[i + 1][nxt][0], nxt)
    stem = model.table.stem
    first = min(allowed[0], key=lambda c: best[0][c][0] + stem["lut" if c.lut else "plain"])
    out, c = [], first
    for i in range(n):
        out.append(c)
        c = best[i][c][1]
    return Design(tuple(out), head)


def refine(model: CostModel, budgets: SiteBudgets, *, max_macs: float, min_units: float,
           allowed: Optional[Sequence[Sequence[Choice]]] = None, heads: Sequence[str] = ACTIVATIONS,
           grid: int = 24, progress: Callable[[str], None] = lambda m: None) -> Refinement:
    """The fastest predicted design within the budgets (see the module docstring)."""
    t0 = time.perf_counter()
    n = len(model.table.sites)
    allowed = [list(a) for a in (allowed or [ALL_CHOICES] * n)]
    if len(allowed) != n or any(not a for a in allowed):
        raise RefineError(f"allowed choices: need a non-empty list for each of the {n} sites")
    seen: Dict[Design, Candidate] = {}

    def price(d: Design) -> Candidate:
        if d not in seen:
            m, u = budgets.totals(d)
            cyc = model.cycles(d)
            seen[d] = Candidate(d, cyc, model.table.core_clock / cyc, m, u)
        return seen[d]

    def feasible(c: Candidate) -> bool:
        return c.macs <= max_macs and c.units >= min_units

    ref = Design.uniform(ALL_CHOICES[0], n)
    ref_macs, ref_units = budgets.totals(ref)
    scale_m, scale_u = model.cycles(ref) / max(ref_macs, 1), model.cycles(ref) / max(ref_units, 1)
    multipliers = [0.0] + [scale_m * 2 ** (k / 3 - 6) for k in range(grid)]
    nus = [0.0] + [scale_u * 2 ** (k / 3 - 6) for k in range(grid)]
    starts = []
    for head in heads:
        for mu in multipliers:
            for nu in nus:
                cand = price(_dp(model, budgets, allowed, head, mu, nu))
                if feasible(cand):
                    starts.append(cand)
    progress(f"refine: {len(seen)} Lagrangian designs, {len(starts)} within the budgets")
    if not starts:
        raise RefineError(f"no design meets MACs <= {max_macs:,.0f} and non-linear units >= {min_units:,.0f} "
                          f"with the allowed choices (the most units possible: {_max_units(budgets, allowed):,})")
    best = min(starts, key=lambda c: c.cycles)
    for start in sorted(starts, key=lambda c: c.cycles)[:8]:
        cand = _local_search(start, allowed, heads, price, feasible)
        if cand.cycles < best.cycles:
            best = cand
    front = [c for c in seen.values() if c.macs <= max_macs]
    return Refinement(best, front, len(seen), time.perf_counter() - t0)


def _max_units(budgets: SiteBudgets, allowed) -> int:
    return budgets.base_units + sum(max(u[c] for c in a) for u, a in zip(budgets.units, allowed))


def _local_search(start: Candidate, allowed, heads, price, feasible) -> Candidate:
    """Best-improvement over single-site changes and the head activation, until none improves."""
    cur = start
    while True:
        best = cur
        d = cur.design
        for i, options in enumerate(allowed):
            for c in options:
                if c == d.choices[i]:
                    continue
                cand = price(Design(d.choices[:i] + (c,) + d.choices[i + 1:], d.head_activation))
                if feasible(cand) and cand.cycles < best.cycles:
                    best = cand
        for h in heads:
            cand = price(Design(d.choices, h))
            if feasible(cand) and cand.cycles < best.cycles:
                best = cand
        if best is cur:
            return cur
        cur = best


def allowed_from_collapse(collapse: Sequence[bool], kernels: Sequence[int] = (3, 5, 7),
                          activations: Sequence[str] = ACTIVATIONS) -> List[List[Choice]]:
    """Per site: IBN always; collapsed only where the PReLU search collapsed the block."""
    out = []
    for flag in collapse:
        forms = ("ibn", "collapsed") if flag else ("ibn",)
        out.append([Choice(f, k, a) for f in forms for k in kernels for a in activations])
    return out
