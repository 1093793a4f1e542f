"""The PReLU search of RAN-e (paper Sec. 2.4-2.5): train a SuperNet with a pull of every AFRB's
alpha towards 1, then turn alphas near 1 into collapsed convolutions and the rest into IBNs.

    loss = cross-entropy + lambda * sum_i (alpha_i - 1)^2          (problem 3)

Every alpha is logged per step (``alphas.csv``, TensorBoard ``alpha/<block>``) and drawn
(``alphas.png``). The decision rule: an AFRB whose final alpha lies in ``band`` (default
[0.8, 1.3], the paper's footnote 4) collapses into a regular k x k convolution; every other AFRB
becomes an IBN with the activation after the expansion restored (``spec.realize_afrbs``); all
activations are hard-swish unless told otherwise. The derived subnetwork is written as a spec
JSON that ``ran profile``, ``ran hwtable`` and ``experiments/train.py`` take directly.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras import fileio
from ran_keras.blocks import AFRB_BAND, check_afrb_band
from ran_keras.errors import RanError, SpecError
from ran_keras.analysis.profiler import profile_spec
from ran_keras.train.config import TrainConfig
from ran_keras.train.transforms import ModelTransform
from ran_keras.report import fmt_count, table
from ran_keras.spec import NetworkSpec, afrb_sites, realize_afrbs, scale_width, with_activation

DEMO_SUPERNET = "ran_e_supernet_digits"


class SearchError(RanError, ValueError):
    """The search cannot run on this model or with these settings."""


# --- pure pieces: penalty, decision rule, derived spec -------------------------------------------

def check_lambda(lam: Any, flag: str = "--lambda") -> float:
    """lambda as a float, or SearchError naming ``flag`` unless it is a finite number >= 0."""
    if isinstance(lam, bool) or not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise SearchError(f"{flag} must be a number >= 0, got {lam!r}")
    return float(lam)


def check_band(band: Sequence[float]) -> Tuple[float, float]:
    """The collapse band by the rule the rewriter uses too (``blocks.check_afrb_band``)."""
    try:
        return check_afrb_band(band, "--band")
    except SpecError as err:
        raise SearchError(str(err)) from None


def decide(alphas: Sequence[float], band: Sequence[float] = AFRB_BAND) -> List[bool]:
    """Collapse (True) where low <= alpha <= high; keep as IBN (False) elsewhere."""
    low, high = check_band(band)
    return [bool(low <= float(a) <= high) for a in alphas]


def require_afrbs(spec: NetworkSpec) -> None:
    if not afrb_sites(spec):
        raise SearchError(f"{spec.name} has no AFRB blocks (afrb1/afrb2/afrb3), so there is no alpha to search; "
                          f"give a PReLU SuperNet such as ran_e_supernet (or --demo for the digits SuperNet)")


def derive_spec(spec: NetworkSpec, alphas: Sequence[float], band: Sequence[float] = AFRB_BAND, *,
                name: Optional[str] = None, activation: str = "hard_swish", input_size: Optional[int] = None,
                note: str = "") -> NetworkSpec:
    """The subnetwork the decision rule gives for these alphas (network order, one per AFRB)."""
    require_afrbs(spec)
    sites = afrb_sites(spec)
    if len(alphas) != len(sites):
        raise SearchError(f"{spec.name} has {len(sites)} AFRBs, got {len(alphas)} alphas")
    flags = decide(alphas, band)
    low, high = check_band(band)
    description = (f"searched from {spec.name}: {sum(flags)} of {len(flags)} AFRBs collapsed (alpha in "
                   f"[{low:g}, {high:g}]){note}")
    derived = realize_afrbs(spec, flags, name=name or f"{spec.name}_searched", description=description)
    derived = with_activation(derived, activation)
    changes: Dict[str, Any] = {"family": spec.family}
    if input_size:
        changes["input_size"] = int(input_size)
    return derived.replace(**changes)


def check_derived(spec: NetworkSpec, band: Sequence[float] = AFRB_BAND, *, name: Optional[str] = None,
                  activation: str = "hard_swish") -> None:
    """Fail now, before any training, on what ``derive_spec`` would refuse at the end: a spec without
    AFRBs, a bad band, --derived_activation or --derived_name (a dry run with every alpha at 1)."""
    from ran_keras.activations import canonical
    require_afrbs(spec)
    check_band(band)
    try:
        canonical(activation)
    except SpecError as err:
        raise SearchError(f"--derived_activation: {err.detail}") from None
    try:
        derive_spec(spec, [1.0] * len(afrb_sites(spec)), band, name=name, activation=activation)
    except SpecError as err:
        what = "--derived_name" if err.path == "name" else f"the derived spec of {spec.name} ({err.path})"
        raise SearchError(f"{what}: {err.detail}") from None


def alpha_layer_names(spec: NetworkSpec, model_name: Optional[str] = None) -> List[str]:
    """Keras names of the SharedAlphaPReLU layers, one per AFRB, in network (alpha) order."""
    name = model_name or spec.name
    return [f"{name}_{site.prefix}_alpha" for site in afrb_sites(spec)]


def alpha_variables(model, spec: NetworkSpec) -> list:
    """The alpha variables of a model built from ``spec``, in network order."""
    out = []
    for layer_name in alpha_layer_names(spec, model.name):
        try:
            out.append(model.get_layer(layer_name).alpha)
        except ValueError:
            raise SearchError(f"model {model.name} has no layer {layer_name!r}; was it built from {spec.name}?") from None
    return out


def check_weights(weights: Optional[Sequence[float]], n: int) -> List[float]:
    """Per-AFRB penalty weights c_i: ``n`` finite numbers >= 0 (None: all 1, the plain search)."""
    if weights is None:
        return [1.0] * n
    values = list(weights)
    if len(values) != n or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                                   and w >= 0 for w in values):
        raise SearchError(f"penalty weights must be {n} finite numbers >= 0 (one per AFRB), got {values!r}")
    return [float(w) for w in values]


def alpha_penalty(alpha_vars: Sequence, lam: float, weights: Optional[Sequence[float]] = None):
    """lambda * sum c_i (alpha_i - 1)^2 as a TF scalar (differentiable in the alphas); c_i = 1 by default."""
    from ran_keras.backend import tf
    c = check_weights(weights, len(alpha_vars))
    return tf.constant(float(lam), tf.float32) * tf.add_n(
        [tf.constant(w, tf.float32) * tf.square(tf.cast(a, tf.float32) - 1.0) for w, a in zip(c, alpha_vars)])


def digits_variant(spec: NetworkSpec, name: str, description: str = "") -> NetworkSpec:
    """``spec`` as the digits demo trains it: width 0.25 (stem and head scaled too, 'round'), the stem
    at stride 1 for 32x32 inputs (total stride 16), BN momentum 0.9 (a few hundred steps are too few
    for slower moving statistics), a stem bias and inputs scaled by 127.5 (as when WORKSPACE.md's demo
    table was measured). One recipe for the SuperNet and for any network derived from its layout."""
    narrow = scale_width(spec, 0.25, rounding="round", head=True, name=name)
    return narrow.replace(stem=(narrow.stem[0].replace(stride=1, bias=True),), input_size=32, bn_momentum=0.9,
                          input_mean=(127.5,), input_std=(127.5,), description=description or narrow.description)


def demo_supernet_spec() -> NetworkSpec:
    """The narrow SuperNet of the digits demo: RAN-e's Table 5 layout (16 AFRBs of the same kinds in
    the same order) through ``digits_variant``."""
    from ran_keras.registry import get_spec
    return digits_variant(get_spec("ran_e_supernet"), DEMO_SUPERNET,
                          "RAN-e SuperNet layout at width 0.25 for 32x32 digits (demo)")


# --- the penalty as a model transform, alpha logging ---------------------------------------------

class AlphaPenalty(ModelTransform):
    """The search's loss term: ``lam * sum c_i (alpha_i - 1)^2`` over the AFRBs of ``spec``, logged as
    ``alpha_penalty``; the model itself is left as built. ``weights`` are the c_i (network order):
    None for the plain search (all 1), measured cycle savings for the hardware-aware one
    (``search.hwcost.collapse_weights``), so expensive blocks are pulled to collapse harder."""

    def __init__(self, spec: NetworkSpec, lam: float, weights: Optional[Sequence[float]] = None):
        super().__init__("alpha_penalty")
        self.spec, self.lam = spec, check_lambda(lam)
        self.weights = check_weights(weights, len(afrb_sites(spec)))

    def loss(self, model):
        return alpha_penalty(alpha_variables(model, self.spec), self.lam, self.weights)


class AlphaLogger:
    """Logs every alpha each ``every`` steps: alphas.csv, TensorBoard alpha/<block>, alphas.png."""

    def __init__(self, spec: NetworkSpec, out_dir: Path, band: Sequence[float], every: int = 1, title: str = ""):
        self.spec, self.out_dir, self.band, self.every = spec, Path(out_dir), check_band(band), max(1, every)
        self.labels = [s.prefix for s in afrb_sites(spec)]
        self.path = self.out_dir / "alphas.csv"
        self.title = title
        self.rows: List[List[float]] = []
        self._fh = None

    # Callback protocol (duck-typed so this module imports no TensorFlow at import time)
    def on_train_begin(self, trainer) -> None:
        from ran_keras.backend import tf
        variables = alpha_variables(trainer.model, self.spec)
        self._read = tf.function(lambda: tf.stack([tf.cast(v, tf.float32) for v in variables]))
        if not getattr(trainer, "chief", True):   # another worker of a cluster: the chief writes the files
            return
        self.rows = [r for r in read_alpha_csv(self.path, len(self.labels)) if r[0] <= trainer.step]
        header = ["step", "epoch"] + self.labels
        text = ",".join(header) + "\n" + "".join(_csv_line(r) for r in self.rows)
        fileio.write_text(self.path, text)   # truncated to the restored step on resume
        self._fh = open(self.path, "a", encoding="utf-8")
        if not self.rows:
            self._append(trainer, 0)

    def values(self) -> List[float]:
        return [float(v) for v in self._read().numpy()]

    def _append(self, trainer, step: int) -> None:
        from ran_keras.backend import tf
        if self._fh is None:
            return
        alphas = self.values()
        row = [step, step / trainer.steps_per_epoch] + alphas
        self.rows.append(row)
        self._fh.write(_csv_line(row))
        writer = getattr(trainer, "train_writer", None)
        if writer is not None:
            with writer.as_default(step=step):
                for label, a in zip(self.labels, alphas):
                    tf.summary.scalar(f"alpha/{label}", a)
                tf.summary.scalar("alpha/collapsed_in_band", sum(decide(alphas, self.band)))

    def on_step_end(self, trainer, step: int, logs: Dict[str, float]) -> None:
        if step % self.every == 0:
            self._append(trainer, step)

    def on_epoch_end(self, trainer, epoch: int, logs: Dict[str, float]) -> None:
        if self._fh:
            self._fh.flush()
            self.plot()

    def before_checkpoint(self, trainer, step: int) -> None:
        if self._fh:   # the rows up to a checkpoint survive a kill (a resumed run keeps exactly those)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def on_train_end(self, trainer, stopped: Optional[str]) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
        if self.rows:
            self.plot()

    def plot(self) -> Optional[Path]:
        if not self.rows:
            return None
        return plot_alphas(np.asarray(self.rows), self.labels, self.band, self.out_dir / "alphas.png", self.title)


def _csv_line(row: Sequence[float]) -> str:
    return f"{int(row[0])},{row[1]:.4f}," + ",".join(f"{a:.6f}" for a in row[2:]) + "\n"


def read_alpha_csv(path: Path, n_alphas: int) -> List[List[float]]:
    """Rows [step, epoch, alpha_1..alpha_n] of an alphas.csv (incomplete lines skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for rec in reader:
            if len(rec) != n_alphas + 2:
                continue
            try:
                out.append([int(rec[0]), float(rec[1])] + [float(x) for x in rec[2:]])
            except ValueError:
                continue
    return out


def plot_alphas(rows: np.ndarray, labels: Sequence[str], band: Sequence[float], path: Path, title: str = "",
                ax=None) -> Path:
    """Alpha trajectories against training step, with the collapse band shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    cmap = plt.get_cmap("tab20")
    low, high = band
    ax.axhspan(low, high, color="0.9", zorder=0, label=f"collapse band [{low:g}, {high:g}]")
    for i, label in enumerate(labels):
        ax.plot(rows[:, 0], rows[:, 2 + i], color=cmap(i % 20), lw=1.2, label=label)
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("training step")
    ax.set_ylabel("alpha")
    ax.set_title(title or "AFRB alphas")
    if own:
        ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        with fileio.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    return Path(path)


# --- running a search ----------------------------------------------------------------------------

@dataclass
class SearchResult:
    lam: float
    band: Tuple[float, float]
    supernet: NetworkSpec
    alphas: List[float]
    collapse: List[bool]
    derived: NetworkSpec
    derived_path: str
    eval_accuracy: Optional[float]
    eval_loss: Optional[float]
    image_size: int
    classes: int
    macs: int
    macs_all_ibn: int
    macs_all_collapsed: int
    params: int
    model_dir: str
    retrain_accuracy: Optional[float] = None
    retrain_dir: Optional[str] = None
    folded_accuracy: Optional[float] = None
    folded_macs: Optional[int] = None
    folded_path: Optional[str] = None
    steps: int = 0
    chief: bool = True   # False on a non-chief worker of a cluster, which writes no outputs
    weights: Optional[List[float]] = None

    @property
    def collapsed(self) -> int:
        return sum(self.collapse)

    def to_dict(self) -> Dict[str, Any]:
        return {"lambda": self.lam, "band": list(self.band), "supernet": self.supernet.name,
                "blocks": [{"path": s.path, "prefix": s.prefix, "kind": s.block.kind, "alpha": a, "collapse": c}
                           for s, a, c in zip(afrb_sites(self.supernet), self.alphas, self.collapse)],
                "collapsed": self.collapsed, "afrbs": len(self.collapse), "derived": self.derived.name,
                "derived_path": self.derived_path, "eval_accuracy": self.eval_accuracy, "eval_loss": self.eval_loss,
                "image_size": self.image_size, "classes": self.classes, "macs": self.macs,
                "macs_all_ibn": self.macs_all_ibn, "macs_all_collapsed": self.macs_all_collapsed,
                "params": self.params, "model_dir": self.model_dir, "steps": self.steps,
                "retrain_accuracy": self.retrain_accuracy, "retrain_dir": self.retrain_dir,
                "folded_accuracy": self.folded_accuracy, "folded_macs": self.folded_macs,
                "folded_path": self.folded_path, "weights": self.weights}


def lambda_tag(lam: float) -> str:
    return f"lambda_{lam:g}"


def run_search(cfg: TrainConfig, spec: Optional[NetworkSpec] = None, *, lam: float, band=AFRB_BAND,
               derived_name: Optional[str] = None, derived_activation: str = "hard_swish",
               alpha_log_every: int = 1, retrain_epochs: int = 0, fold: bool = False, log=print,
               weights: Optional[Sequence[float]] = None) -> SearchResult:
    """Search once at ``lam`` in ``cfg.model_dir``; writes derived_spec.json and search.json there.

    ``fold``: also collapse the trained SuperNet itself with the rewriter (``ran_keras.rewrite``;
    alphas in the band snapped to 1, no retraining) and report that model's held-out accuracy.
    ``retrain_epochs``: also train the derived subnetwork from scratch, as the paper does.
    """
    from ran_keras.tasks.classification import ClassificationTask
    from ran_keras.train.trainer import Trainer, train
    band = check_band(band)
    lam = check_lambda(lam)
    if cfg.task != ClassificationTask.name:
        raise SearchError(f"--task={cfg.task}: the search trains the {ClassificationTask.name} task; leave --task unset")
    task = ClassificationTask(cfg, spec)
    spec = task.spec   # what is trained: --model (or ``spec``) with --width/--activation applied, once
    penalty = AlphaPenalty(spec, lam, weights)
    trainer = Trainer(cfg, task, [penalty], log=log)
    check_derived(spec, band, name=derived_name, activation=derived_activation)
    out_dir = Path(cfg.model_dir)
    logger = AlphaLogger(spec, out_dir, band, alpha_log_every, title=f"{spec.name}: AFRB alphas, lambda = {lam:g}")
    trainer.callbacks.append(logger)
    weighted = "" if weights is None else " c_i"
    log(f"search: {spec.name} with {len(afrb_sites(spec))} AFRBs, loss = CE + {lam:g} * sum{weighted}(alpha - 1)^2, "
        f"collapse band [{band[0]:g}, {band[1]:g}]")
    result = trainer.run()
    alphas = logger.values()
    derived = derive_spec(spec, alphas, band, name=derived_name or f"{spec.name}_lam{lam:g}",
                          activation=derived_activation, input_size=task.image_size,
                          note=f"; lambda {lam:g}, {result.steps} steps on {task.data_name}")
    derived_path = out_dir / "derived_spec.json"
    if result.chief:   # the other workers of a cluster write nothing
        derived.save(derived_path)
    size, classes = task.image_size, task.classes
    shape = (size, size, spec.input_channels)
    n = len(alphas)
    prof = profile_spec(derived, shape, classes=classes)
    res = SearchResult(
        lam=float(lam), band=band, supernet=spec, alphas=alphas, collapse=decide(alphas, band), derived=derived,
        derived_path=str(derived_path), eval_accuracy=result.final.get("eval_accuracy"),
        eval_loss=result.final.get("eval_loss"), image_size=size, classes=classes, macs=prof.macs,
        macs_all_ibn=profile_spec(realize_afrbs(spec, [False] * n), shape, classes=classes).macs,
        macs_all_collapsed=profile_spec(realize_afrbs(spec, [True] * n), shape, classes=classes).macs,
        params=prof.params, model_dir=str(out_dir), steps=result.steps, chief=result.chief,
        weights=None if weights is None else penalty.weights)
    if fold and result.chief:
        _fold_supernet(res, task, band, log)
    if retrain_epochs:
        retrain_cfg = cfg.replace(model_dir=str(out_dir / "retrain"), epochs=retrain_epochs, model=None,
                                  width=1.0, activation=None, drop_path_rate=None,
                                  warmup_epochs=min(cfg.warmup_epochs, retrain_epochs))
        log(f"retraining the derived subnetwork {derived.name} from scratch for {retrain_epochs} epochs")
        retrained = train(retrain_cfg, derived, log=log)
        res.retrain_accuracy = retrained.final.get("eval_accuracy")
        res.retrain_dir = retrain_cfg.model_dir
    if result.chief:
        fileio.write_json(out_dir / "search.json", res.to_dict())
    log(format_result(res))
    return res


def _fold_supernet(res: SearchResult, task, band, log) -> None:
    """The trained SuperNet with its in-band AFRBs folded (exact folds, alphas moved to 1), evaluated."""
    from ran_keras.builder import load_model
    from ran_keras.rewrite.fold import FoldError, fold
    out = Path(res.model_dir) / "folded.keras"
    try:
        folded, report = fold(load_model(Path(res.model_dir) / "model.keras"), band, on_unsupported="skip",
                              samples=0)
    except FoldError as err:
        log(f"fold: the rewriter could not fold {res.supernet.name}: {err}")
        return
    correct = total = 0
    for images, labels in task.build_inputs(training=False):
        probs = folded(images, training=False).numpy()
        correct += int(np.sum(np.argmax(probs, -1) == np.argmax(labels.numpy(), -1)))
        total += len(probs)
    with fileio.atomic_path(out, suffix=".keras") as tmp:
        folded.save(tmp)
    res.folded_accuracy, res.folded_macs, res.folded_path = correct / max(total, 1), report.after.get("macs"), str(out)
    folded_afrbs = sum(1 for a in report.alphas if a["collapsed"])
    log(f"fold: the SuperNet with its {folded_afrbs} in-band AFRBs folded (alpha set to 1, no retraining): "
        f"held-out accuracy {100 * res.folded_accuracy:.2f}%, {fmt_count(res.folded_macs)} MACs; {out}")


def run_sweep(cfg: TrainConfig, spec: Optional[NetworkSpec] = None, *, lambdas: Sequence[float],
              log=print, **kwargs) -> List[SearchResult]:
    """One search per lambda in ``cfg.model_dir/lambda_<value>``; writes sweep.json and sweep.md.

    Every setting is checked before the first lambda trains. ``derived_name`` is refused: each
    lambda's spec is named ``<supernet>_lam<lambda>``."""
    if not lambdas:
        raise SearchError("--lambdas needs at least one value")
    lambdas = [check_lambda(lam, "--lambdas: each value") for lam in lambdas]
    if kwargs.get("derived_name"):
        raise SearchError(f"--derived_name={kwargs['derived_name']} names the spec of a single search, but a sweep "
                          f"(--lambdas, or --demo's default sweep) derives one spec per lambda, each named "
                          f"<supernet>_lam<lambda>; drop --derived_name, or run one search with --lambda=VALUE")
    if not cfg.model_dir:
        raise SearchError("--model_dir is required (each lambda runs in --model_dir/lambda_<value>)")
    from ran_keras.tasks.classification import prepare_spec
    supernet = prepare_spec(cfg, spec)
    check_derived(supernet, kwargs.get("band", AFRB_BAND), activation=kwargs.get("derived_activation", "hard_swish"))
    root = Path(cfg.model_dir)
    results = []
    for lam in lambdas:
        log(f"=== lambda {lam:g} ===")
        sub = cfg.replace(model_dir=str(root / lambda_tag(lam)))
        results.append(run_search(sub, spec, lam=lam, log=log, **kwargs))
    if not results[0].chief:
        return results
    fileio.write_json(root / "sweep.json", [r.to_dict() for r in results])
    fileio.write_text(root / "sweep.md", format_sweep(results, markdown=True) + "\n")
    plot_sweep(results, root / "alphas_sweep.png")
    log(format_sweep(results))
    return results


def plot_sweep(results: Sequence[SearchResult], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(results)
    cols = min(n, 2)
    rows_n = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 3.6 * rows_n), dpi=100, squeeze=False)
    labels = [s.prefix for s in afrb_sites(results[0].supernet)]
    for ax, r in zip(axes.flat, results):
        rows = np.asarray(read_alpha_csv(Path(r.model_dir) / "alphas.csv", len(labels)))
        if len(rows):
            plot_alphas(rows, labels, r.band, path, title=f"lambda {r.lam:g}: {r.collapsed}/{len(r.collapse)} "
                                                               f"collapsed", ax=ax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=6, ncol=1, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    with fileio.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


# --- reports -------------------------------------------------------------------------------------

def _block_macs(prof, model_name: str, prefix: str) -> int:
    head = f"{model_name}_{prefix}_"
    return sum(r.macs for r in prof.layers if r.name.startswith(head))


def format_result(res: SearchResult) -> str:
    """The derived architecture block by block, its MACs and the number of collapsed blocks."""
    prof = profile_spec(res.derived, (res.image_size, res.image_size, res.derived.input_channels),
                        classes=res.classes)
    derived_sites = {s.path: s for s in res.derived.sites}
    rows = []
    for site, alpha, col in zip(afrb_sites(res.supernet), res.alphas, res.collapse):
        d = derived_sites[site.path]
        b = d.block
        rows.append([site.path, site.block.kind, f"{alpha:.3f}", "collapse" if col else "keep (IBN)", b.kind,
                     f"{d.in_channels}->{d.out_channels}", b.kernel, b.stride, f"{b.expansion:g}",
                     fmt_count(_block_macs(prof, res.derived.name, d.prefix))])
    out = [f"derived subnetwork {res.derived.name} (lambda {res.lam:g}, band [{res.band[0]:g}, {res.band[1]:g}]):",
           table(["block", "supernet", "alpha", "decision", "derived", "channels", "k", "s", "e", "MACs"], rows),
           f"collapsed {res.collapsed} of {len(res.collapse)} AFRBs; MACs {fmt_count(res.macs)} at "
           f"{res.image_size}x{res.image_size} ({res.classes} classes; all-IBN {fmt_count(res.macs_all_ibn)}, "
           f"all collapsed {fmt_count(res.macs_all_collapsed)}); params {fmt_count(res.params)}",
           f"SuperNet held-out accuracy after the search: "
           f"{'-' if res.eval_accuracy is None else f'{100 * res.eval_accuracy:.2f}%'}"
           + (f"; derived subnetwork retrained: {100 * res.retrain_accuracy:.2f}%" if res.retrain_accuracy is not None
              else "")
           + (f"; SuperNet folded without retraining: {100 * res.folded_accuracy:.2f}%"
              if res.folded_accuracy is not None else ""),
           f"spec: {res.derived_path}"]
    return "\n".join(out)


def format_sweep(results: Sequence[SearchResult], markdown: bool = False) -> str:
    retrained = any(r.retrain_accuracy is not None for r in results)
    folded = any(r.folded_accuracy is not None for r in results)
    headers = ["lambda", "collapsed", "SuperNet acc", "derived MACs", "MACs vs all-IBN"]
    if folded:
        headers.append("folded SuperNet acc")
    if retrained:
        headers.append("derived retrained acc")
    headers.append("alphas (network order)")
    rows = []
    for r in results:
        row = [f"{r.lam:g}", f"{r.collapsed}/{len(r.collapse)}",
               "-" if r.eval_accuracy is None else f"{100 * r.eval_accuracy:.2f}%", fmt_count(r.macs),
               f"{100 * (r.macs / r.macs_all_ibn - 1):+.1f}%"]
        if folded:
            row.append("-" if r.folded_accuracy is None else f"{100 * r.folded_accuracy:.2f}%")
        if retrained:
            row.append("-" if r.retrain_accuracy is None else f"{100 * r.retrain_accuracy:.2f}%")
        row.append(" ".join(f"{a:.2f}" for a in r.alphas))
        rows.append(row)
    return table(headers, rows, markdown=markdown)
