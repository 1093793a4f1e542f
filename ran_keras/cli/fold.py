"""``ran fold``: fold a saved model's linear parts (BN, linear chains, AFRBs at alpha ~ 1) exactly."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ran_keras.cli.common import CliError, add_json_arg, emit_json, nonneg_int

from ran_keras.blocks import AFRB_BAND
from ran_keras.rewrite.defaults import CHAIN_POLICIES, FOLD_SAMPLES

DESCRIPTION = """\
Fold the linear parts of a saved Keras model into fewer layers, exactly: BatchNorms into their
convolutions, AFRBs whose alpha lies in the band into ReLU -> one k x k conv (alpha := 1), and
other linear chains (1x1 -> depthwise -> 1x1, ...) where the merged conv has no more MACs.
Writes a new model; prints what was folded, params/MACs before and after, and the output change
on sample images (offline photos scaled to [-1, 1] for a square 1- or 3-channel input; seeded
uniform noise in [-1, 1] for other inputs)."""


def _float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fold", help="fold BN, linear chains and AFRBs at alpha ~ 1 into fewer layers, exactly",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="saved model (.keras or .h5)")
    p.add_argument("output", help="where to write the folded model (.keras or .h5)")
    p.add_argument("--alpha-band", nargs=2, type=_float, metavar=("LO", "HI"), default=None,
                   help=f"collapse AFRBs whose alpha is in [LO, HI], LO <= 1 <= HI "
                        f"(default {AFRB_BAND[0]:g} {AFRB_BAND[1]:g}; 1 1 = only exact 1)")
    p.add_argument("--chains", choices=CHAIN_POLICIES, default="smaller",
                   help="merge other linear chains: where MACs do not grow and no border map is needed "
                        "(smaller, default), wherever possible (always), or never (none)")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="instead of failing, leave a fold undone (and report it) when it is blocked by a "
                        "grouped, dilated or depth-multiplier convolution, or when an AFRB in the band "
                        "needs a border map and the model's input size is not fixed")
    p.add_argument("--samples", type=nonneg_int, default=FOLD_SAMPLES, metavar="N",
                   help=f"sample images for the output-change check (default {FOLD_SAMPLES}; 0 skips the check)")
    add_json_arg(p)
    p.set_defaults(func=cmd_fold)


def cmd_fold(args) -> int:
    src, dest = Path(args.input), Path(args.output)
    for path, what in ((src, "input"), (dest, "output")):
        if path.suffix not in (".keras", ".h5"):
            raise CliError(f"{what} must be a .keras or .h5 file, got {str(path)!r}")
    if src.is_dir():  # a missing file is reported by load_model
        raise CliError(f"input {str(src)!r} is a directory, not a saved model file (.keras or .h5)")
    if src.resolve() == dest.resolve():
        raise CliError(f"output {str(dest)!r} is the input; write the folded model to a new file")
    band = tuple(args.alpha_band) if args.alpha_band is not None else AFRB_BAND
    if not band[0] <= 1.0 <= band[1]:
        raise CliError(f"--alpha-band LO HI must have LO <= 1 <= HI, got {band[0]:g} {band[1]:g}")
    from ran_keras import fileio
    from ran_keras.builder import load_model
    from ran_keras.rewrite.fold import fold, format_report

    print(f"loading {src} ...", file=sys.stderr)
    model = load_model(src)
    print(f"folding {model.name} ({len(model.layers)} layers) ...", file=sys.stderr)
    new_model, report = fold(model, band, chains=args.chains,
                             on_unsupported="skip" if args.skip_unsupported else "error", samples=args.samples)
    with fileio.atomic_path(dest) as tmp:
        new_model.save(tmp)
    print(f"wrote {dest}", file=sys.stderr)
    if args.json:
        emit_json(dict(report.to_dict(), input=str(src), output=str(dest)), args.json)
    else:
        print(format_report(report))
    return 0
