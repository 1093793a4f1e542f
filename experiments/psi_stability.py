"""ψ stability study for the ConvNeXt co-design block (paper Sec. 4, beyond the paper).

The same small co-design network (ConvNeXt widths --widths, depths --depths, 40% of the hidden
channels on the lower branch) is trained on the offline scikit-learn digits at 32x32 with the
``digits`` recipe, once per ψ, seed and learning rate. A run that hits a non-finite loss is stopped
by the trainer's NaN stop and recorded (step and message), not crashed on.

    python -m ran_keras.experiments.psi_stability --out_dir=runs/psi --seeds=5 --epochs=4

writes ``runs.csv`` (one row per run: psi, lr, seed, status, step, accuracy, seconds) and
``summary.md`` / ``summary.json`` (per ψ and lr: NaN runs, accuracy mean ± std and min-max over the
finished runs, wall time), and prints the table as it goes. Runs are sequential (one TensorFlow
process, one run at a time).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from absl import flags

from ran_keras.experiments import flags as flags_lib   # the training flags; --epochs is shared with them

FLAGS = flags.FLAGS
_FIELDS = ("psi", "learning_rate", "seed", "status", "step", "accuracy", "seconds", "message")
#: shared flags whose default is None when the training flags are loaded
_DEFAULTS = {"epochs": 4}


def _flag(name: str):
    value = getattr(FLAGS, name)
    return _DEFAULTS.get(name) if value is None else value


def _define() -> None:
    def define(kind: str, name: str, default, help_text: str) -> None:
        if name not in FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text)

    define("list", "psi", ["none", "gelu", "exp", "bounded_exp"], "psi activations to compare")
    define("integer", "seeds", 5, "seeds per psi (0 .. seeds-1)")
    define("integer", "epochs", 4, "epochs per run (default 4; digits recipe: 1 warm-up epoch, cosine)")
    define("list", "learning_rates", ["3e-3"], "peak learning rates to try (the digits recipe's is 3e-3)")
    define("list", "widths", ["16", "32"], "stage widths of the co-design net")
    define("list", "depths", ["1", "1"], "stage depths of the co-design net")
    define("float", "linear_fraction", 0.4, "fraction of hidden channels on the lower branch")
    define("string", "out_dir", None, "output folder (created; one model_dir per run inside)")


def study_spec(psi: str, widths: Sequence[int], depths: Sequence[int], fraction: float):
    """The small co-design net of the study: ConvNeXt-T's blocks at ``widths`` / ``depths`` with 3x3
    depthwise convs and no stochastic depth (nothing random but the seed)."""
    import ran_keras
    from ran_keras.spec import to_codesign
    base = ran_keras.get_spec("convnext_tiny")
    block, down = base.stages[0][-1], base.stages[1][0]
    stages = tuple((down.replace(channels=w),) * (i > 0) + (block.replace(channels=w, kernel=3, drop_path=0.0),) * d
                   for i, (w, d) in enumerate(zip(widths, depths)))
    small = base.replace(name="psi_net", stem=(base.stem[0].replace(channels=widths[0]),), stages=stages,
                         input_size=32, description=f"psi study: ConvNeXt blocks (3x3), widths {list(widths)}, "
                                                    f"depths {list(depths)}")
    return to_codesign(small, fraction, psi, name=f"psi_{psi}")


def run_one(psi: str, lr: float, seed: int, out_dir: Path, log, *, epochs: int, widths: Sequence[int],
            depths: Sequence[int], fraction: float, **overrides: Any) -> Dict[str, Any]:
    """One training run; a non-finite loss is a recorded outcome (status 'nan', its step), not an error.
    ``overrides``: other TrainConfig settings (e.g. steps_per_epoch for a quick check)."""
    from ran_keras.train.config import resolve_config
    from ran_keras.train.trainer import NonFiniteLossError, train
    spec = study_spec(psi, widths, depths, fraction)
    model_dir = out_dir / f"{psi}_lr{lr:g}_seed{seed}"
    cfg = resolve_config("digits", {"model_dir": str(model_dir), "seed": seed, "epochs": epochs,
                                    "learning_rate": lr, "log_every": 10 ** 6, **overrides})
    t0 = time.time()
    row: Dict[str, Any] = {"psi": psi, "learning_rate": lr, "seed": seed}
    try:
        result = train(cfg, spec, log=log)
        row.update(status="ok", step=result.steps, accuracy=_accuracy(result.final), message="")
    except NonFiniteLossError as err:
        row.update(status="nan", step=err.step, accuracy=None, message=str(err).split(":")[0])
    row["seconds"] = round(time.time() - t0, 1)
    return row


def _accuracy(final: Dict[str, float]) -> Optional[float]:
    key = next((k for k in ("eval_accuracy", "accuracy", "eval_top1") if k in final), None)
    return None if key is None else float(final[key])


def summarise(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (psi, lr): runs, NaN runs, accuracy mean/std/min/max of the finished runs, total seconds."""
    out = []
    for key in dict.fromkeys((r["psi"], r["learning_rate"]) for r in rows):
        group = [r for r in rows if (r["psi"], r["learning_rate"]) == key]
        acc = [r["accuracy"] for r in group if r["status"] == "ok" and r["accuracy"] is not None]
        out.append({"psi": key[0], "learning_rate": key[1], "runs": len(group),
                    "nan_runs": sum(r["status"] == "nan" for r in group),
                    "accuracy_mean": statistics.fmean(acc) if acc else None,
                    "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
                    "accuracy_min": min(acc, default=None), "accuracy_max": max(acc, default=None),
                    "seconds_total": round(sum(r["seconds"] for r in group), 1),
                    "seconds_per_run": round(statistics.fmean(r["seconds"] for r in group), 1)})
    return out


def markdown(summary: List[Dict[str, Any]]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| psi | lr | runs | NaN runs | accuracy % mean ± std (min-max), finished runs | s per run |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        acc = "-" if s["accuracy_mean"] is None else (
            f"{pct(s['accuracy_mean'])} ± {pct(s['accuracy_std'] or 0.0)} "
            f"({pct(s['accuracy_min'])}-{pct(s['accuracy_max'])})")
        lines.append(f"| {s['psi']} | {s['learning_rate']:g} | {s['runs']} | {s['nan_runs']} | {acc} | "
                     f"{s['seconds_per_run']:g} |")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    from ran_keras import activations
    from ran_keras.errors import ConfigError
    if not FLAGS.out_dir:
        raise ConfigError("--out_dir is required (the folder for runs.csv, summary.md and the run folders)")
    psis = ["none" if activations.canonical(p, "--psi") == "linear" else activations.canonical(p, "--psi")
            for p in FLAGS.psi]
    try:
        lrs = [float(v) for v in FLAGS.learning_rates]
    except ValueError:
        raise ConfigError(f"--learning_rates must be numbers, got {FLAGS.learning_rates}") from None
    if FLAGS.seeds < 1 or _flag("epochs") < 1 or any(not lr > 0 for lr in lrs):
        raise ConfigError("--seeds and --epochs must be at least 1 and --learning_rates positive")
    out_dir = Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / "train.log", "a")  # noqa: SIM115 - open for the whole study
    rows: List[Dict[str, Any]] = []
    total = len(psis) * len(lrs) * FLAGS.seeds
    for psi in psis:
        for lr in lrs:
            for seed in range(FLAGS.seeds):
                row = run_one(psi, lr, seed, out_dir, lambda m: print(m, file=log_file, flush=True),
                              epochs=_flag("epochs"), widths=[int(w) for w in FLAGS.widths],
                              depths=[int(d) for d in FLAGS.depths], fraction=FLAGS.linear_fraction)
                rows.append(row)
                acc = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
                print(f"[{len(rows)}/{total}] psi {psi} lr {lr:g} seed {seed}: {row['status']} "
                      f"(step {row['step']}) accuracy {acc} in {row['seconds']:.0f}s", flush=True)
                _write(out_dir, rows)
    print(markdown(summarise(rows)))
    return 0


def _write(out_dir: Path, rows: List[Dict[str, Any]]) -> None:
    """runs.csv and summary.{json,md} after every run, each written whole."""
    from ran_keras.fileio import atomic_path
    with atomic_path(out_dir / "runs.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, _FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    settings = {k: _flag(k) for k in ("psi", "seeds", "epochs", "learning_rates", "widths", "depths",
                                      "linear_fraction")}
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps({"settings": settings, "summary": summary}, indent=1))
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(markdown(summary) + "\n")


def run(argv: Optional[Sequence[str]] = None) -> int:
    _define()
    argv = list(sys.argv if argv is None else argv)
    return flags_lib.run_main(main, argv, "psi_stability", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(run())
