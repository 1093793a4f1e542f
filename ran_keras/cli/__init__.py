"""The ``ran`` command line. Each module in COMMANDS adds its subcommands via ``register``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import List, Optional

#: modules that contribute subcommands (each has ``register(subparsers)``); keep imports light
COMMANDS = [
    "ran_keras.cli.zoo",
    "ran_keras.cli.export",
    "ran_keras.cli.scale",
    "ran_keras.cli.train",
    "ran_keras.cli.fold",
    "ran_keras.cli.codesign",
    "ran_keras.cli.weights",
    "ran_keras.cli.evaluate",
    "ran_keras.cli.hwsearch",
    "ran_keras.cli.detect",
]


def build_parser() -> argparse.ArgumentParser:
    from ran_keras import __version__
    parser = argparse.ArgumentParser(
        prog="ran", description="ran-keras: Restructurable Activation Networks for tf_keras and Arm Ethos-U.")
    parser.add_argument("--version", action="version", version=f"ran-keras {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ran_keras.errors import RanError
    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.formatwarning
    warnings.formatwarning = lambda message, *_args, **_kw: f"ran {args.command}: warning: {message}\n"
    try:
        _check_outputs(args)
        return int(args.func(args) or 0)
    except (RanError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        print(f"ran {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ran {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `ran profile | head`: the reader is gone, stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        warnings.formatwarning = shown


def _check_outputs(args) -> None:
    """Every command's output paths (-o/--output, --json FILE, --output-dir) are checked before it starts."""
    from ran_keras import fileio
    for attr, flag in (("output", "--output"), ("json", "--json")):
        value = getattr(args, attr, None)
        if value not in (None, "-"):
            fileio.check_output_file(value, flag)
    if getattr(args, "output_dir", None) and not getattr(args, "list_targets", False):
        fileio.check_output_dir(args.output_dir, "--output-dir")


if __name__ == "__main__":
    sys.exit(main())
