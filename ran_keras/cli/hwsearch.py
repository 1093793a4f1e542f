"""``ran hwsearch``: hardware-aware restructuring of RAN-e with Vela in the loop (issue 15)."""

from __future__ import annotations

import argparse

from ran_keras.cli.common import CliError, add_json_arg, emit_json, nonneg_int, positive_int

EXAMPLE = """examples:
  ran hwsearch --targets u65-256,u55-128 --output-dir out/hwsearch        # tables, digits search, refine, confirm
  ran hwsearch --targets u65-256 --search-epochs 0 --train-epochs 0      # cost model + refinement only
"""


def _floats(text: str, flag: str, count: int = 0):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"numbers separated by commas, got {text!r}") from None
    if count and len(values) != count:
        raise argparse.ArgumentTypeError(f"{count} numbers separated by commas, got {text!r}")
    return values


def _kernels(text: str):
    from ran_keras.search.hwspace import KERNELS
    values = [int(v) for v in _floats(text, "--kernels")]
    if not values or any(v not in KERNELS for v in values):
        raise argparse.ArgumentTypeError(f"a subset of {','.join(map(str, KERNELS))}, got {text!r}")
    return values


def _activations(text: str):
    from ran_keras.activations import canonical
    from ran_keras.errors import SpecError
    from ran_keras.search.hwspace import ACTIVATIONS
    try:
        values = [canonical(v.strip()) for v in text.split(",") if v.strip()]
    except SpecError:
        values = []
    if not values or any(v not in ACTIVATIONS for v in values):
        raise argparse.ArgumentTypeError(f"a subset of {','.join(ACTIVATIONS)} (aliases such as hswish work), "
                                         f"got {text!r}")
    return values


def register(sub) -> None:
    p = sub.add_parser("hwsearch", help="hardware-aware RAN-e restructuring: Vela cost tables, a c_i-weighted PReLU "
                                        "search on digits, refinement under MAC/unit budgets, Vela confirmation",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="u65-256,u55-128",
                   help="Vela targets, comma-separated; the first one weights the search (default u65-256,u55-128)")
    p.add_argument("--supernet", default="ran_e_supernet", help="PReLU SuperNet whose AFRB sites are searched")
    p.add_argument("--output-dir", default="out/hwsearch", help="tables, specs, plots, hwsearch.json")
    p.add_argument("--input-size", type=positive_int, default=224, help="input size of the costed networks")
    p.add_argument("--classes", type=positive_int, default=1000)
    p.add_argument("--lambda", dest="lam", type=float, default=0.1, help="penalty weight of the digits search")
    p.add_argument("--band", type=lambda t: _floats(t, "--band", 2), default=[0.8, 1.3],
                   help="alphas in [low,high] may collapse (default 0.8,1.3)")
    p.add_argument("--search-epochs", type=nonneg_int, default=20,
                   help="digits PReLU search epochs; 0: no search, every block may collapse")
    p.add_argument("--train-epochs", type=nonneg_int, default=20,
                   help="train the found networks and RAN-e-GT on digits at the demo width; 0: skip")
    p.add_argument("--kernels", type=_kernels, default=[3, 5, 7], help="kernel sizes the refinement may use (default 3,5,7)")
    p.add_argument("--activations", type=_activations, default=["relu6", "hard_swish"],
                   help="activations the refinement may use (default relu6,hard_swish)")
    p.add_argument("--validate", type=nonneg_int, default=8,
                   help="random held-out designs compiled per target to check the cost model (besides A, B, C, GT)")
    p.add_argument("--max-macs", type=float, help="MAC budget (default: RAN-e-C's at --input-size)")
    p.add_argument("--min-units", type=float, help="non-linear unit budget (default: RAN-e-GT's)")
    add_json_arg(p)
    p.set_defaults(func=cmd_hwsearch)


def cmd_hwsearch(args) -> int:
    from ran_keras.export.vela import resolve_target
    from ran_keras.search.hwsearch import HwSearchConfig, run
    from ran_keras.search.prelu import check_band, check_lambda
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise CliError("--targets: give at least one Vela target, e.g. u65-256")
    for t in targets:
        resolve_target(t)
    cfg = HwSearchConfig(targets=tuple(targets), supernet=args.supernet, output_dir=args.output_dir,
                         input_size=args.input_size, classes=args.classes, lam=check_lambda(args.lam),
                         band=check_band(args.band), search_epochs=args.search_epochs,
                         train_epochs=args.train_epochs, validate=args.validate, kernels=tuple(args.kernels),
                         activations=tuple(args.activations), max_macs=args.max_macs,
                         min_units=args.min_units)
    doc = run(cfg)
    if args.json:
        emit_json(doc, args.json)
    return 0
