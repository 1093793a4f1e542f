"""``ran train`` and ``ran search``: the absl-flag entry points of ``experiments/`` under ``ran``.

Everything after the command name goes to absl unchanged (``ran train --help`` lists the flags).
"""

from __future__ import annotations

import argparse
import importlib

ENTRY_POINTS = {
    "train": ("ran_keras.experiments.train", "train a model (recipes ran_e / convnext / digits; resumable)"),
    "search": ("ran_keras.experiments.search", "PReLU search over AFRB alphas -> derived subnetwork spec JSON"),
}


def register(sub: argparse._SubParsersAction) -> None:
    for name, (module, help_text) in ENTRY_POINTS.items():
        p = sub.add_parser(name, help=help_text, add_help=False, prefix_chars="\0",
                           description=f"{help_text}. Flags are absl flags: ran {name} --help")
        p.add_argument("argv", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda args, _name=name, _module=module: _run(_name, _module, args.argv))


def _run(name: str, module: str, argv) -> int:
    return importlib.import_module(module).run([f"ran {name}"] + list(argv))
