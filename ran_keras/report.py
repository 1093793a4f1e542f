"""Plain-text and Markdown tables and number formatting shared by every command that prints."""

from __future__ import annotations

from typing import Any, Optional, Sequence


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
