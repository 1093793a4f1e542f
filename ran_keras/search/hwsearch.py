"""``ran hwsearch``: hardware-aware restructuring of RAN-e with Vela in the loop (issue 15).

1. Cost tables: per target, Vela cycles per SuperNet site and choice (``hwcost``), cached.
2. Hardware-aware PReLU search on the offline digits (the accuracy signal): the narrow digits SuperNet
   trained with ``lambda * sum c_i (alpha_i - 1)^2``, c_i the normalised cycles saved by collapsing
   block i on the first target; blocks whose alpha ends in the band *may* be collapsed.
3. Refinement (``refine``): per target, the design with the highest predicted FPS within the budgets
   (MACs <= RAN-e-C's, non-linear units >= RAN-e-GT's), collapsing only where the search allowed.
4. Confirmation: full Vela compiles of each found design and of the reference networks (A, B, C, GT,
   the all-IBN SuperNet, EfficientNet-Lite-B0); the Pareto plot; optionally both the found designs
   and GT trained at the digits width for the held-out accuracy comparison.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ran_keras import fileio
from ran_keras.search import hwcost, refine as refine_lib
from ran_keras.search.hwspace import Design, design_of, design_spec, sites

REFERENCES = ("ran_e_supernet_ibn", "ran_e_a", "ran_e_b", "ran_e_c", "ran_e_gt")
BASELINE = "efficientnet_lite_b0"
MAC_BUDGET_MODEL = "ran_e_c"
UNIT_BUDGET_MODEL = "ran_e_gt"


@dataclass
class HwSearchConfig:
    targets: Sequence[str] = ("u65-256", "u55-128")
    supernet: str = "ran_e_supernet"
    output_dir: str = "out/hwsearch"
    input_size: int = 224
    classes: int = 1000
    lam: float = 0.1                     # the penalty's lambda (digits search)
    band: Sequence[float] = (0.8, 1.3)
    search_epochs: int = 20              # 0: no search, every block may collapse
    train_epochs: int = 20               # digits training of the found designs and GT; 0: skip
    kernels: Sequence[int] = (3, 5, 7)   # the refinement's kernel and activation choices (tables hold all)
    activations: Sequence[str] = ("relu6", "hard_swish")
    validate: int = 8                    # random held-out designs compiled per target (besides A, B, C, GT)
    max_macs: Optional[float] = None     # default: RAN-e-C's MACs
    min_units: Optional[float] = None    # default: RAN-e-GT's non-linear units
    names: Optional[Dict[str, str]] = None   # target -> name of the found spec


#: names of the found specs on the paper's two targets (registered as such in models/ran_e.py)
FOUND_NAMES = {"u65-256": "ran_e_hw_u65", "u55-128": "ran_e_hw_u55"}


def found_name(target: str) -> str:
    import re
    return FOUND_NAMES.get(target) or "ran_e_hw_" + re.sub(r"[^0-9a-zA-Z]+", "_", target).strip("_").lower()


def command_line(cfg: HwSearchConfig) -> str:
    """The ``ran hwsearch`` options that decide the found design (those differing from the defaults)."""
    default = HwSearchConfig()
    parts = ["ran hwsearch", "--targets " + ",".join(cfg.targets)]
    for flag, attr in (("--supernet", "supernet"), ("--input-size", "input_size"), ("--classes", "classes"),
                       ("--lambda", "lam"), ("--search-epochs", "search_epochs"), ("--max-macs", "max_macs"),
                       ("--min-units", "min_units")):
        if getattr(cfg, attr) != getattr(default, attr):
            parts.append(f"{flag} {getattr(cfg, attr):g}" if isinstance(getattr(cfg, attr), float)
                         else f"{flag} {getattr(cfg, attr)}")
    for flag, attr in (("--band", "band"), ("--kernels", "kernels"), ("--activations", "activations")):
        if tuple(getattr(cfg, attr)) != tuple(getattr(default, attr)):
            parts.append(f"{flag} " + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in getattr(cfg, attr)))
    return " ".join(parts)


def _budgets(cfg: HwSearchConfig):
    from ran_keras.analysis.profiler import profile_spec
    from ran_keras.registry import get_spec
    macs = cfg.max_macs if cfg.max_macs is not None else profile_spec(
        get_spec(MAC_BUDGET_MODEL), input_size=cfg.input_size, classes=cfg.classes).macs
    units = cfg.min_units if cfg.min_units is not None else profile_spec(
        get_spec(UNIT_BUDGET_MODEL), input_size=cfg.input_size, classes=cfg.classes).nonlinear_units
    return float(macs), float(units)


def prelu_search(cfg: HwSearchConfig, weights: Sequence[float], say) -> Dict[str, Any]:
    """The hardware-aware PReLU search on digits; the collapse flags and alphas it ends with."""
    from ran_keras.search.prelu import demo_supernet_spec, run_search
    from ran_keras.train.config import resolve_config
    tcfg = resolve_config("digits", {"model_dir": str(Path(cfg.output_dir) / "search"), "epochs": cfg.search_epochs})
    res = run_search(tcfg, demo_supernet_spec(), lam=cfg.lam, band=cfg.band, weights=list(weights), log=say)
    return {"alphas": res.alphas, "collapse": res.collapse, "eval_accuracy": res.eval_accuracy,
            "weights": list(weights), "lambda": cfg.lam, "band": list(cfg.band), "epochs": cfg.search_epochs}


def train_digits(spec, model_dir: Path, epochs: int, say, seed: int = 0) -> Optional[float]:
    """Held-out digits accuracy of ``spec`` trained at the demo's width with the ``digits`` recipe."""
    from ran_keras.search.prelu import digits_variant
    from ran_keras.train.config import resolve_config
    from ran_keras.train.trainer import train
    narrow = digits_variant(spec, f"{spec.name}_digits")
    cfg = resolve_config("digits", {"model_dir": str(model_dir), "epochs": epochs, "seed": seed})
    result = train(cfg, narrow, log=say)
    return result.final.get("eval_accuracy")


def digits_accuracies(specs, folder: Path, epochs: int, say) -> Dict[str, Optional[float]]:
    """{name: held-out digits accuracy}; specs that differ only in name and description train once."""
    done: Dict[str, Optional[float]] = {}
    out = {}
    for spec in specs:
        key = json.dumps(dict(spec.to_dict(), name="", description=""), sort_keys=True)
        if key not in done:
            done[key] = train_digits(spec, folder / spec.name, epochs, say)
        out[spec.name] = done[key]
    return out


def run(cfg: HwSearchConfig, say: Callable[[str], None] = print) -> Dict[str, Any]:
    from ran_keras.export.vela import resolve_target
    from ran_keras.registry import get_spec
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    targets = [resolve_target(t) for t in cfg.targets]          # bad targets fail before any work
    supernet = get_spec(cfg.supernet)
    max_macs, min_units = _budgets(cfg)
    settings = hwcost.ExportSettings(input_size=cfg.input_size, classes=cfg.classes)
    comp = hwcost.Compiler(supernet, settings, out, say)
    models = {t.name: hwcost.CostModel(hwcost.measure_table(supernet, t, settings, out, say=say, compiler=comp))
              for t in targets}
    held = held_out_designs(supernet, cfg.validate)
    validation = {}
    for t in targets:
        checks = hwcost.validate(models[t.name], held, comp, t, say)
        rate = hwcost.pricing_rate(models[t.name], [d for _, d in held] * 100)
        validation[t.name] = {"checks": [c.to_dict() for c in checks], "designs_per_second": rate,
                              "max_abs_error": max(abs(c.error) for c in checks)}
        say(f"{t.name}: cost model within {100 * validation[t.name]['max_abs_error']:.4f}% of Vela on "
            f"{len(checks)} held-out designs; {rate:,.0f} designs priced per second")
    first = models[targets[0].name]
    weights = hwcost.collapse_weights(first)
    say("collapse weights c_i on " + targets[0].name + ": " + " ".join(f"{w:.2f}" for w in weights))
    if cfg.search_epochs > 0:
        search = prelu_search(cfg, weights, say)
        collapse = search["collapse"]
    else:
        search, collapse = None, [True] * len(weights)
    allowed = refine_lib.allowed_from_collapse(collapse, cfg.kernels, cfg.activations)
    budgets = refine_lib.site_budgets(supernet, cfg.input_size, cfg.classes)
    doc: Dict[str, Any] = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
                           "budgets": {"max_macs": max_macs, "min_units": min_units}, "search": search,
                           "validation": validation,
                           "targets": {}}
    found = {}
    for tgt in targets:
        model = models[tgt.name]
        ref = refine_lib.refine(model, budgets, max_macs=max_macs, min_units=min_units, allowed=allowed,
                                heads=tuple(cfg.activations), progress=say)
        name = (cfg.names or {}).get(tgt.name) or found_name(tgt.name)
        spec = design_spec(supernet, ref.best.design, name=name,
                           description=f"found by `{command_line(cfg)}` for {tgt.name} (issue 15)")
        fileio.write_text(out / f"{name}.json", json.dumps(spec.to_dict(), indent=1) + "\n")
        say(f"{tgt.name}: best predicted {ref.best.fps:.1f} FPS, {ref.best.macs / 1e6:.0f}M MACs, "
            f"{ref.best.units:,} units; {ref.evaluated:,} designs priced at {ref.rate:,.0f}/s -> {out / name}.json")
        found[tgt.name] = spec
        doc["targets"][tgt.name] = {"best": ref.best.to_dict(), "spec": f"{name}.json", "evaluated": ref.evaluated,
                                    "designs_per_second": ref.rate,
                                    "front": front_summary(ref.front),
                                    "confirmed": confirm(comp, supernet, model, tgt, spec, say)}
    if cfg.train_epochs > 0:
        doc["digits"] = digits_accuracies([get_spec("ran_e_gt")] + list(found.values()), out / "digits",
                                          cfg.train_epochs, say)
    doc["seconds"] = time.perf_counter() - t0
    fileio.write_text(out / "hwsearch.json", json.dumps(doc, indent=1) + "\n")
    fileio.write_text(out / "hwsearch.md", format_report(doc))
    say(format_report(doc, markdown=False))
    for tgt in targets:
        plot_pareto(doc["targets"][tgt.name], tgt.name, out / f"pareto_{tgt.name}.png", doc["budgets"])
    return doc


def front_summary(front, sample: int = 1500) -> List[Dict[str, Any]]:
    """The refinement's designs within the MAC budget, for the plot: every one on the Pareto front of
    (predicted FPS, non-linear units), with its design, plus a seeded sample of the rest (numbers only)."""
    import random
    ordered = sorted(front, key=lambda c: (-c.units, -c.fps))
    pareto, best = [], -1.0
    for c in ordered:
        if c.fps > best:
            pareto.append(c)
            best = c.fps
    keep = {id(c) for c in pareto}
    rest = [c for c in front if id(c) not in keep]
    rest = random.Random(0).sample(rest, min(sample, len(rest)))
    return ([dict(c.to_dict(), pareto=True) for c in pareto]
            + [{"fps": c.fps, "macs": c.macs, "nonlinear_units": c.units, "pareto": False} for c in rest])


def held_out_designs(supernet, n_random: int) -> List:
    """Designs not used to fill the tables: SubNetworks A, B, C, GT, GT with ReLU6, seeded random ones."""
    from ran_keras.registry import get_spec
    from ran_keras.search.hwspace import Choice
    held = [(n, design_of(supernet, get_spec(n))) for n in ("ran_e_a", "ran_e_b", "ran_e_c", "ran_e_gt")]
    gt = held[-1][1]
    held.append(("gt_relu6", Design(tuple(Choice(c.form, c.kernel, "relu6") for c in gt.choices), "relu6")))
    return held + hwcost.random_designs(n_random, len(sites(supernet)), seed=0)


def confirm(comp, supernet, model, tgt, spec, say) -> Dict[str, Any]:
    """Full Vela compiles of the found spec and the reference networks: measured and predicted FPS."""
    from ran_keras.analysis.profiler import profile_spec
    from ran_keras.registry import get_spec
    rows = {}
    for name in (spec.name,) + REFERENCES + (BASELINE,):
        s = spec if name == spec.name else get_spec(name)
        rep = comp.compile(s, tgt)
        prof = profile_spec(s, input_size=comp.settings.input_size, classes=comp.settings.classes)
        try:
            predicted = model.fps(design_of(supernet, s))
        except Exception:  # noqa: BLE001 - a network outside the space (EfficientNet) has no prediction
            predicted = None
        rows[name] = {"fps": rep.inferences_per_second, "cycles": rep.cycles_total, "fps_predicted": predicted,
                      "macs": prof.macs, "nonlinear_units": prof.nonlinear_units, "params": prof.params,
                      "cpu_ops": rep.cpu_op_count}
        say(f"  {tgt.name} {name}: {rep.inferences_per_second:.1f} FPS (Vela)"
            + (f", predicted {predicted:.1f}" if predicted else ""))
    return rows


def plot_pareto(entry: Dict[str, Any], target: str, path: Path, budgets: Optional[Dict[str, float]] = None) -> Path:
    """FPS against non-linear units and against MACs: refinement designs (predicted), the references and
    the found design (Vela), the budgets as dashed lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    front = entry["front"]
    for ax, key, label in ((axes[0], "nonlinear_units", "non-linear units"), (axes[1], "macs", "MACs")):
        ax.scatter([c[key] for c in front], [c["fps"] for c in front],
                   s=6, color="0.75", label="refinement designs (predicted)")
        for name, row in entry["confirmed"].items():
            found = name.startswith("ran_e_hw")
            ax.scatter([row[key]], [row["fps"]], s=60 if found else 35, marker="*" if found else "o",
                       color="C3" if found else "C0", zorder=3)
            ax.annotate(name.replace("ran_e_", ""), (row[key], row["fps"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        limit = (budgets or {}).get("min_units" if key == "nonlinear_units" else "max_macs")
        if limit:
            ax.axvline(limit, color="C2", ls="--", lw=1, label="budget")
        ax.set_xlabel(label)
        ax.set_ylabel(f"FPS on {target} (Vela 5.2)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"hardware-aware restructuring on {target}: Vela-measured networks, predicted designs")
    fig.tight_layout()
    with fileio.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def format_report(doc: Dict[str, Any], markdown: bool = True) -> str:
    """The run's tables: cost-model validation, the found designs against the references, digits accuracy."""
    from ran_keras.report import table
    parts = []
    val = doc.get("validation", {})
    names = [c["name"] for c in next(iter(val.values()))["checks"]] if val else []
    rows = []
    for i, name in enumerate(names):
        row = [name]
        for t in val:
            c = val[t]["checks"][i]
            row += [f"{c['predicted']:,.0f}", f"{c['measured']:,}", f"{100 * c['error']:+.4f}%"]
        rows.append(row)
    if rows:
        headers = ["design"] + [f"{t} {h}" for t in val for h in ("predicted", "Vela", "error")]
        parts.append(table(headers, rows, markdown=markdown))
        parts.append("designs priced per second: " + ", ".join(
            f"{t} {v['designs_per_second']:,.0f}" for t, v in val.items()))
    for t, entry in doc.get("targets", {}).items():
        conf = entry["confirmed"]
        gt = conf.get("ran_e_gt", {}).get("fps")
        rows = [[n, f"{r['fps']:.1f}", f"{r['fps'] / gt:.2f}x" if gt else "-",
                 "-" if r["fps_predicted"] is None else f"{r['fps_predicted']:.1f}",
                 f"{r['macs'] / 1e6:.1f}M", f"{r['nonlinear_units']:,}", r["cpu_ops"]] for n, r in conf.items()]
        parts.append(f"{t}: best of {entry['evaluated']:,} designs priced ({entry['designs_per_second']:,.0f}/s "
                     "with the budget bookkeeping)")
        parts.append(table(["network", "FPS (Vela)", "vs GT", "FPS predicted", "MACs", "non-linear units", "CPU ops"],
                           rows, markdown=markdown))
    digits = doc.get("digits")
    if digits:
        parts.append(table(["network (digits width, recipe digits)", "held-out accuracy"],
                           [[n, "-" if a is None else f"{100 * a:.2f}%"] for n, a in digits.items()],
                           markdown=markdown))
    return "\n\n".join(parts) + "\n"
