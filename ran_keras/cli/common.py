"""Helpers shared by the ``ran`` subcommands."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, List, Optional

from ran_keras import fileio
from ran_keras.errors import RanError


class CliError(RanError):
    """A command-line usage problem (bad flag value, missing argument)."""


def json_dest(value: str) -> str:
    if value != "-" and not value.endswith(".json"):
        raise argparse.ArgumentTypeError(
            f"--json takes an optional output file ending in .json (or '-' for stdout), got {value!r}; "
            "put --json after the positional arguments or write --json=FILE")
    return value


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", nargs="?", const="-", default=None, type=json_dest, metavar="FILE",
                        help="print the results as JSON (to FILE if given, written atomically)")


def emit_json(data: Any, dest: Optional[str]) -> None:
    text = fileio.json_text(data, what="the --json output")
    if dest in (None, "-"):
        sys.stdout.write(text)
    else:
        fileio.write_text(dest, text)
        print(f"wrote {dest}", file=sys.stderr)


def _int_at_least(value: str, minimum: int, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
    return number


def positive_int(value: str) -> int:
    return _int_at_least(value, 1, "a positive integer")


def nonneg_int(value: str) -> int:
    return _int_at_least(value, 0, "an integer >= 0")


def floats(value: str) -> List[float]:
    """'127.5' or '123.7,116.3,103.5' -> finite floats (input mean / std flags)."""
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    if not numbers or not all(math.isfinite(v) for v in numbers):
        raise argparse.ArgumentTypeError(f"expected numbers like 127.5 or 123.7,116.3,103.5, got {value!r}")
    return numbers


def positive_floats(value: str) -> List[float]:
    """As ``floats``, each > 0 (an input std: the input is divided by it)."""
    numbers = floats(value)
    if not all(v > 0 for v in numbers):
        raise argparse.ArgumentTypeError(f"expected positive numbers (the input is divided by them) like 127.5 or "
                                         f"58.4,57.1,57.4, got {value!r}")
    return numbers
