"""Golden Vela cycle counts: a CI tripwire for changes in the builder, the converter or Vela.

``tests/test_vela_golden.py`` exports a fixed small set of models at 224x224 (seeded weights,
offline photos), compiles them for every named target and fails when ``cycles_total`` moves by
more than 2% from ``tests/data/vela_golden_cycles.json``. When a change is intended, regenerate
the file and commit it with the change:

    .venv/bin/python tests/vela_golden.py --write

(without ``--write`` it only compares and prints the differences). A development tool: it lives
beside the tests and their data, not in the installed package.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

GOLDEN_MODELS = ("efficientnet_lite_b0", "ran_e_gt", "ran_e_hw_u65", "ran_e_hw_u55")
GOLDEN_TARGETS = ("u55-128", "u65-256", "u65-256-384k", "u85-256", "u85-512")
TOLERANCE = 0.02
SETTINGS = {"input_size": 224, "classes": 1000, "seed": 0, "calibration": "photos", "samples": 8,
            "per_channel": True}
DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "vela_golden_cycles.json"


def export_golden_models(folder, models: Sequence[str] = GOLDEN_MODELS, compare: bool = False) -> Dict[str, Path]:
    """Export the golden models with the golden settings; {model: .tflite path}."""
    from ran_keras.export.pipeline import export_model
    s = SETTINGS
    out = {}
    for name in models:
        path = Path(folder) / f"{name}.tflite"
        export_model(name, path, input_size=s["input_size"], classes=s["classes"], seed=s["seed"],
                     calibration=s["calibration"], samples=s["samples"], per_channel=s["per_channel"],
                     compare=compare)
        out[name] = path
    return out


def measure(tflites: Mapping[str, Path], folder, targets: Sequence[str] = GOLDEN_TARGETS) -> Dict[str, Dict[str, int]]:
    """cycles_total per model and target."""
    from ran_keras.export.vela import run_vela
    return {name: {t: run_vela(path, t, Path(folder) / "vela" / t).cycles_total for t in targets}
            for name, path in tflites.items()}


def differences(measured: Mapping[str, Mapping[str, int]], golden: Mapping[str, Mapping[str, int]],
                tolerance: float = TOLERANCE) -> List[str]:
    """One line per (model, target) whose cycles moved by more than ``tolerance`` (or is missing)."""
    problems = []
    for model, per_target in golden.items():
        for target, expected in per_target.items():
            got = measured.get(model, {}).get(target)
            if got is None:
                problems.append(f"{model} on {target}: not measured (golden {expected})")
                continue
            change = (got - expected) / expected
            if abs(change) > tolerance:
                problems.append(f"{model} on {target}: cycles_total {got} vs golden {expected} ({100 * change:+.2f}%, "
                                f"limit {100 * tolerance:.0f}%)")
    return problems


def document(cycles: Mapping[str, Mapping[str, int]]) -> Dict:
    from ran_keras.export.hwtable import software_versions
    return {"format": "ran-keras-vela-golden", "version": 1, "tolerance": TOLERANCE, "settings": SETTINGS,
            "software": software_versions(),
            "regenerate": ".venv/bin/python tests/vela_golden.py --write",
            "cycles_total": {m: dict(t) for m, t in cycles.items()}}


def _no_file(path: Path) -> str:
    return f"no golden file at {path}; run with --write to create it"


def load(path=DEFAULT_FILE) -> Dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(_no_file(path))
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/vela_golden.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the measured cycles as the new golden file")
    parser.add_argument("--file", default=str(DEFAULT_FILE), help=f"golden file (default {DEFAULT_FILE})")
    args = parser.parse_args(argv)
    from ran_keras import fileio
    path = Path(args.file)
    if not args.write and not path.is_file():  # before minutes of exporting
        print(_no_file(path), file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        print(f"exporting {', '.join(GOLDEN_MODELS)} at 224x224 and compiling for {', '.join(GOLDEN_TARGETS)} ...",
              file=sys.stderr)
        cycles = measure(export_golden_models(tmp), tmp)
    for model, per_target in cycles.items():
        print(f"{model}: " + ", ".join(f"{t} {c:,}" for t, c in per_target.items()))
    if args.write:
        fileio.write_text(path, json.dumps(document(cycles), indent=1) + "\n")
        print(f"wrote {path}")
        return 0
    problems = differences(cycles, load(path)["cycles_total"])
    for line in problems:
        print(line)
    print("golden cycles: " + ("MOVED" if problems else f"unchanged (within {100 * TOLERANCE:g}%)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
