"""``ran scale``: RAN-i's training-free width/depth scaling sweep (paper Sec. 3.3-3.4)."""

from __future__ import annotations

import argparse
import re
import sys

from ran_keras.cli.common import CliError, add_json_arg, emit_json, nonneg_int, positive_int

EXAMPLE = """examples:
  ran scale --base convnext_tiny --macs 3.3e9 --params 21e6 --tolerance 2% --samples 800 --seed 0
  ran scale --paper-budgets --grid 0.005,0.01 --min-width 64 --plot sweep.png --spec-dir specs/
  ran scale --paper-budgets --tolerance 6% --grid 0.005,0.01 --min-width 64,76,87 --mark ran_i_tiny --plot s.png
  ran scale --macs 3.3B,4.5B,8.5B --params 21M,28M,50M --csv candidates.csv --json sweep.json
"""


def _flag(name: str, flag: str):
    """An argparse type calling ``ran_keras.search.scaling.<name>`` (imported on use: it loads numpy) that turns
    its ScaleError into a usage error for ``flag``."""
    def convert(text):
        from ran_keras.search import scaling
        try:
            return getattr(scaling, name)(text, flag)
        except scaling.ScaleError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None
    return convert


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale", help="training-free width/depth scaling of ConvNeXt by NN-Mass (RAN-i)",
        description="Scale a ConvNeXt-family base model to MACs/params budgets without training: enumerate "
                    "width multipliers wm and depth multipliers dm (widths round(w*wm), depths round(d*dm)), "
                    "compute params, MACs and NN-Mass analytically, keep the candidates within each budget and "
                    "rank them by NN-Mass (paper Sec. 3.3).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    # read '-3e9', '-21M' or '-1:2' as a (bad) value, so the message says why, not "expected one argument"
    p._negative_number_matcher = re.compile(r"^-\.?\d")
    p.add_argument("--base", default="convnext_tiny",
                   help="registered ConvNeXt-family model or spec .json to scale (default convnext_tiny)")
    p.add_argument("--macs", type=_flag("parse_counts", "--macs"), metavar="LIST",
                   help="MACs target(s), comma-separated for several budgets: 3.3e9 or 3.3B,4.5B,8.5B")
    p.add_argument("--params", type=_flag("parse_counts", "--params"), metavar="LIST",
                   help="parameter target(s), paired with --macs in order: 21e6 or 21M,28M,50M")
    p.add_argument("--paper-budgets", action="store_true",
                   help="the paper's H1/H2/H3: (3.3B MACs, 21M params), (4.5B, 28M), (8.5B, 50M)")
    p.add_argument("--tolerance", type=_flag("parse_tolerance", "--tolerance"), default=0.02,
                   metavar="PCT", help="how far from each target a candidate may be: 2%% (default) or 0.02")
    # defaults spelled out here rather than read from ran_keras.search.scaling: importing it loads numpy, which
    # `ran` start-up does not pay for; tests check they equal scaling.PAPER_WM, PAPER_DM, DEFAULT_SAMPLES
    p.add_argument("--wm", type=_flag("parse_range", "--wm"), default=None, metavar="LO:HI",
                   help="width multiplier range (default 0.25:1.6, the paper's)")
    p.add_argument("--dm", type=_flag("parse_range", "--dm"), default=None, metavar="LO:HI",
                   help="depth multiplier range (default 0.6:2.56, the paper's)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--samples", type=positive_int, default=None, metavar="N",
                     help="N uniform random (wm, dm) pairs (default 800, as in the paper; at most 5,000,000)")
    how.add_argument("--grid", type=_flag("parse_grid", "--grid"), metavar="STEP",
                     help="every point of a grid with this step (or WSTEP,DSTEP) instead of random samples "
                          "(at most 5,000,000 points)")
    p.add_argument("--seed", type=nonneg_int, default=None, help="random seed for --samples (default 0)")
    p.add_argument("--min-width", type=_flag("parse_widths", "--min-width"), metavar="C",
                   help="keep only candidates whose narrowest stage has at least C channels (Corollary 1); "
                        "one value for all budgets or one per budget (64,76,87)")
    p.add_argument("--top", type=positive_int, default=5, help="candidates to list per budget (default 5)")
    p.add_argument("--input-size", type=positive_int, help="square input size (default: the base spec's, 224)")
    p.add_argument("--classes", type=positive_int, default=1000, help="classifier size (default 1000)")
    p.add_argument("--csv", metavar="FILE", help="write every candidate (with a 0/1 column per budget) to FILE")
    p.add_argument("--plot", metavar="FILE.png",
                   help="plot NN-Mass vs MACs, budget bands shaded, chosen models starred")
    p.add_argument("--mark", action="append", default=[], metavar="MODEL",
                   help="also mark this model on the plot (repeatable), e.g. --mark ran_i_tiny")
    p.add_argument("--spec-dir", metavar="DIR",
                   help="write each budget's chosen model as a spec JSON (PREFIX_h1.json, ...) for ran profile, "
                        "training and export")
    p.add_argument("--prefix", help="name of the written specs (default BASE_scaled)")
    p.add_argument("--drop-path", type=float, metavar="RATE",
                   help="stochastic-depth rate of the written specs (default: the base model's)")
    add_json_arg(p)
    p.set_defaults(func=cmd_scale)


def cmd_scale(args) -> int:
    from ran_keras import registry
    from ran_keras.search import scaling

    if args.plot and not args.plot.endswith(".png"):
        raise CliError(f"--plot writes a PNG; give a file name ending in .png, got {args.plot!r}")
    if args.mark and not args.plot:
        raise CliError("--mark only applies to --plot")
    budgets = scaling.budgets_from_options(args.macs, args.params, paper=args.paper_budgets,
                                         tolerance=args.tolerance, min_width=args.min_width)
    options = scaling.sweep_options(wm=args.wm or scaling.PAPER_WM, dm=args.dm or scaling.PAPER_DM, samples=args.samples,
                                  seed=args.seed, grid=args.grid)
    base = registry.resolve_spec(args.base)
    scaling.check_output_names(base, args.prefix, args.drop_path)
    result = scaling.run_sweep(base, budgets, **options, input_size=args.input_size, classes=args.classes)
    marks = scaling.model_marks(args.mark, args.input_size, args.classes) if args.mark else ()
    written = scaling.write_outputs(result, csv_path=args.csv, plot_path=args.plot, spec_dir=args.spec_dir,
                                  prefix=args.prefix, drop_path=args.drop_path, marks=marks)
    if args.json:
        emit_json(dict(result.to_dict(args.top), written=written), args.json)
    else:
        print(scaling.format_report(result, args.top))
    for what in ("csv", "plot"):
        if what in written:
            print(f"wrote {written[what]}", file=sys.stderr)
    for budget, path in written["specs"].items():
        print(f"wrote {path} ({budget}'s chosen model; try `ran profile {path}`)", file=sys.stderr)
    if result.unmet:
        print(f"ran scale: error: {result.unmet_message()}", file=sys.stderr)
        return 1
    return 0
