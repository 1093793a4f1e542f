"""Counts read and written (``parse_count``, ``fmt_count``), and the plain-text and Markdown
tables every command that prints shares."""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

from ran_keras.errors import RanError

_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_COUNT_RE = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)")


class CountError(RanError, ValueError):
    """Text that is not a positive count like '4.7M', '3.3e9' or '1.8B'."""


def parse_count(text: Any, what: str = "count") -> float:
    """'4.7M' -> 4.7e6; '3.3e9', '3.3B', '3.3G', '3300M' -> 3.3e9; a bare number as is. The one
    parser of counts (budgets, the paper's printed figures); ``what`` names the value in errors."""
    raw = str(text).strip()
    m = _COUNT_RE.fullmatch(raw)
    if not m:
        raise CountError(f"{what}: cannot read {raw!r} as a count; write a number with an optional K, M, B or G "
                         f"suffix, e.g. 3.3e9, 3.3B or 21M")
    unit = m.group(2).upper()
    if unit not in _UNITS:
        raise CountError(f"{what}: unknown unit {m.group(2)!r} in {raw!r}; accepted: K, M, B (= G), T, or none")
    value = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise CountError(f"{what}: must be a positive count, got {raw!r}")
    return value


def printed_tolerance(text: str) -> float:
    """Half a unit of the last printed digit of a figure like '1.4B' (0.05e9): its rounding error."""
    parse_count(text)
    mantissa = _COUNT_RE.fullmatch(str(text).strip()).group(1).lower()
    decimals = len(mantissa.split("e")[0].split(".")[1]) if "." in mantissa.split("e")[0] else 0
    return 0.5 * 10.0 ** (-decimals) * _UNITS[_COUNT_RE.fullmatch(str(text).strip()).group(2).upper()]


def fmt_count(value: Optional[float], digits: int = 2) -> str:
    """4672000 -> '4.67M', 1.81e9 -> '1.81B'; None -> '-'."""
    if value is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{unit}"
    return f"{value:g}"


def fmt_pct(value: Optional[float], digits: int = 1, signed: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}%" if signed else f"{value:.{digits}f}%"


def fmt_num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False,
          right: Optional[Sequence[bool]] = None) -> str:
    """Format rows under headers; numbers are right-aligned unless ``right`` says otherwise."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    if right is None:
        right = [all(_numeric(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        parts = [c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(r, widths, right)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    out = [line(cells[0])]
    if markdown:
        out.append("|" + "|".join(("-" * (w + 1) + ":") if rt else ("-" * (w + 2))
                                  for w, rt in zip(widths, right)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _numeric(text: str) -> bool:
    t = text.strip().rstrip("%xMBK").lstrip("+-")
    if t in ("", "-"):
        return text.strip() == "-"
    try:
        float(t)
        return True
    except ValueError:
        return False
