"""RAN-i scaling sweep as an absl-flag run: everything into one output folder.

    python -m ran_keras.experiments.scale --out_dir=runs/scale_h123 --paper_budgets \
        --samples=800 --seed=0 --mark=ran_i_tiny,ran_i_small,ran_i_base

writes ``candidates.csv`` (every candidate), ``sweep.json`` (budgets, top candidates, settings),
``nnmass_vs_macs.png`` and each budget's chosen model as a spec JSON (``specs/PREFIX_h1.json``),
ready for ``ran profile``, export and training. ``ran scale`` is the same sweep on the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from ran_keras.search.defaults import DEFAULT_SAMPLES, MAX_CANDIDATES, PAPER_DM, PAPER_WM

FLAGS = flags.FLAGS

#: flags this entry point shares with train/search when both are loaded in one process; their
#: values may then default to None, so read them through ``_flag``
_DEFAULTS = {"classes": 1000}


def _define() -> None:
    """Define the flags once; a name another entry point already defined (--seed) is shared."""
    def define(kind: str, name: str, default, help_text: str) -> None:
        if name not in FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text)

    define("string", "base", "convnext_tiny", "registered ConvNeXt-family model or spec .json to scale")
    define("list", "macs", [], "MACs target per budget, e.g. 3.3e9,4.5e9,8.5e9 (or 3.3B,...)")
    define("list", "params", [], "parameter target per budget, e.g. 21e6,28e6,50e6 (or 21M,...)")
    define("bool", "paper_budgets", False, "use the paper's H1/H2/H3 budgets (Sec. 3.4)")
    define("string", "tolerance", "2%", "how far from each target a candidate may be (2% or 0.02)")
    define("string", "wm", None, "width multiplier range LO:HI (default %g:%g, the paper's)" % PAPER_WM)
    define("string", "dm", None, "depth multiplier range LO:HI (default %g:%g, the paper's)" % PAPER_DM)
    define("integer", "samples", None, f"random (wm, dm) samples (default {DEFAULT_SAMPLES}; at most "
                                       f"{MAX_CANDIDATES:,}; not with --grid)")
    define("integer", "seed", None, "random seed for --samples (default 0; not with --grid)")
    define("string", "grid", None, f"grid step STEP or WSTEP,DSTEP instead of random samples (at most "
                                   f"{MAX_CANDIDATES:,} points)")
    define("list", "min_width", [], "narrowest stage must have at least this many channels (Corollary 1): one "
                                    "value for all budgets or one per budget, e.g. 64 or 64,76,87")
    define("integer", "top", 5, "candidates to report per budget")
    define("integer", "input_size", None, "square input size (default: the base spec's)")
    define("integer", "classes", 1000, "classifier size")
    define("list", "mark", [], "models to mark on the plot, e.g. ran_i_tiny,ran_i_small")
    define("string", "prefix", None, "name of the written specs (default BASE_scaled)")
    define("float", "drop_path", None, "stochastic-depth rate of the written specs (default: the base's)")
    define("string", "out_dir", None, "output folder (created)")


def _flag(name: str):
    value = getattr(FLAGS, name)
    return _DEFAULTS.get(name) if value is None else value


def _given(name: str):
    """The flag's value if given on the command line, else None (a shared flag's default may differ)."""
    return getattr(FLAGS, name) if FLAGS[name].present else None


_define()


def main(argv) -> int:
    from ran_keras.errors import RanError
    try:
        return _main(argv)
    except RanError as err:
        print(f"ran_keras.experiments.scale: error: {err}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    del argv
    from ran_keras import registry
    from ran_keras.search import scaling
    from ran_keras.cli.common import emit_json

    if not FLAGS.out_dir:
        raise scaling.ScaleError("--out_dir is required: the folder for candidates.csv, sweep.json, the plot "
                               "and the chosen specs")
    for name in ("top", "input_size", "classes"):
        value = _flag(name)
        if value is not None and value < 1:
            raise scaling.ScaleError(f"--{name} must be a positive integer, got {value}")
    min_width = scaling.parse_widths(",".join(FLAGS.min_width), "--min_width") if FLAGS.min_width else None
    budgets = scaling.budgets_from_options([scaling.parse_count(v, "--macs") for v in FLAGS.macs],
                                         [scaling.parse_count(v, "--params") for v in FLAGS.params],
                                         paper=FLAGS.paper_budgets,
                                         tolerance=scaling.parse_tolerance(FLAGS.tolerance, "--tolerance"),
                                         min_width=min_width, sep="_")
    options = scaling.sweep_options(
        wm=scaling.parse_range(FLAGS.wm, "--wm") if FLAGS.wm else scaling.PAPER_WM,
        dm=scaling.parse_range(FLAGS.dm, "--dm") if FLAGS.dm else scaling.PAPER_DM,
        samples=_given("samples"), seed=_given("seed"), grid=scaling.parse_grid(FLAGS.grid) if FLAGS.grid else None)
    base = registry.resolve_spec(FLAGS.base)
    scaling.check_output_names(base, FLAGS.prefix, FLAGS.drop_path, sep="_")
    result = scaling.run_sweep(base, budgets, **options, input_size=FLAGS.input_size, classes=_flag("classes"))
    out = Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marks = scaling.model_marks(FLAGS.mark, FLAGS.input_size, _flag("classes")) if FLAGS.mark else ()
    written = scaling.write_outputs(result, csv_path=out / "candidates.csv", plot_path=out / "nnmass_vs_macs.png",
                                  spec_dir=out / "specs", prefix=FLAGS.prefix, drop_path=FLAGS.drop_path, marks=marks)
    emit_json(dict(result.to_dict(FLAGS.top), written=written), str(out / "sweep.json"))
    print(scaling.format_report(result, FLAGS.top, sep="_"))
    print(f"wrote {out}/: candidates.csv, sweep.json, nnmass_vs_macs.png, specs/ ({len(written['specs'])} specs)",
          file=sys.stderr)
    if result.unmet:
        print(f"error: {result.unmet_message()}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
