"""Helpers shared by the ``ran`` subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

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
