"""``fold(model)``: the whole-model rewriter (BN folding, linear chains, AFRBs at alpha ~ 1)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras.blocks import AFRB_BAND, check_afrb_band
from ran_keras.errors import SpecError
from ran_keras.rewrite import graph as g
from ran_keras.rewrite.defaults import FOLD_SAMPLES
from ran_keras.rewrite.linear import FoldError

_TOPS = 10


@dataclass
class FoldRecord:
    """One fold: original layers -> new layers."""
    kind: str                          # 'bn' | 'chain' | 'afrb' | 'residual'
    layers: List[str]                  # original layers it replaces (BNs, convs, the alpha, the Add)
    into: List[str]                    # layers of the new model
    macs_before: Optional[int]         # None: the input size is not fixed
    macs_after: Optional[int]
    border_map: bool = False           # a BorderBias (one constant ADD on the NPU) follows the conv
    border_map_values: int = 0
    residual: bool = False             # an Add(x, chain(x)) folded into the kernel as an identity
    alpha: Optional[float] = None      # AFRB folds: the alpha that was set to 1
    drift: Optional[float] = None      # AFRB folds: relative L2 change at its output (cumulative)


@dataclass
class Skipped:
    """Something the rewriter looked at and left as it was, and why."""
    layers: List[str]
    reason: str


@dataclass
class FoldReport:
    model: str
    alpha_band: Tuple[float, float]
    chains: str
    folds: List[FoldRecord] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    alphas: List[Dict[str, Any]] = field(default_factory=list)
    before: Dict[str, Any] = field(default_factory=dict)
    after: Dict[str, Any] = field(default_factory=dict)
    output_change: Optional[Dict[str, Any]] = None

    @property
    def exact(self) -> bool:
        """True when no alpha was moved (every fold is exact up to float32 rounding)."""
        return all(f.alpha is None or f.alpha == 1.0 for f in self.folds)

    @property
    def border_maps(self) -> int:
        return sum(1 for f in self.folds if f.border_map)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.folds if f.kind == kind)

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["alpha_band"] = list(self.alpha_band)
        out["exact"] = self.exact
        out["border_maps"] = self.border_maps
        macs = (self.before.get("macs"), self.after.get("macs"))
        out["macs_saved"] = None if None in macs else macs[0] - macs[1]
        return out


# --- public entry point ------------------------------------------------------------------------

def fold(model, alpha_band: Optional[Sequence[float]] = AFRB_BAND, *, chains: str = "smaller",
         on_unsupported: str = "error", sample: Optional[Any] = None, samples: int = FOLD_SAMPLES,
         name: Optional[str] = None):
    """Fold the linear parts of ``model`` exactly; returns ``(new_model, FoldReport)``.

    What folds:

    * every BatchNorm (and ConvNeXt LayerScale) into the Conv2D / DepthwiseConv2D / Dense before it;
    * every AFRB (``SharedAlphaPReLU``) whose alpha lies in ``alpha_band`` (inclusive): alpha := 1
      turns PReLU(1 - alpha) into a ReLU and PReLU(alpha) into the identity, and the block's
      expand -> depthwise -> project chain becomes one k x k conv (AFRB-3: the residual pair);
      ``alpha_band=None`` folds only alphas exactly 1;
    * other linear chains (1x1 -> kxk depthwise -> 1x1 and the shorter ones, standalone BNs) by
      ``chains``: 'smaller' (default) merges where the merged conv has no more MACs and needs no
      border map, 'always' wherever the result is one conv, 'none' never; and an ``Add`` of a
      chain's input and output into the kernel's centre tap (residual identity).

    Every fold is exact (float64 math, float32 weights). A chain whose spatial op sees a bias
    (e.g. a BN after the 1x1 expansion) gets a ``BorderBias`` layer with the constant border map
    (see ``ran_keras.rewrite.linear``); the report counts them. Grouped, dilated or
    depth-multiplier convolutions can still absorb a BN but never merge with other convs: a
    fold that needs that (an AFRB collapse, or ``chains='always'``) raises ``FoldError``, or with
    ``on_unsupported='skip'`` is left alone and reported. So does an AFRB collapse that needs a
    border map in a model whose input size is not fixed (``chains='always'`` leaves such a chain
    and reports it; ``'smaller'`` never merges chains that need a border map).

    ``sample`` (an input batch; default: ``samples`` offline photos scaled to [-1, 1] for a square
    1- or 3-channel input, seeded uniform noise in [-1, 1] for other image inputs; a model with
    several inputs needs ``sample``) is run through both models to report the output change;
    ``samples=0`` skips that. The original model is not modified.
    """
    band = _check_band(alpha_band)
    if chains not in g.CHAIN_POLICIES:
        raise FoldError(f"chains must be one of {', '.join(map(repr, g.CHAIN_POLICIES))}, got {chains!r}")
    if on_unsupported not in ("error", "skip"):
        raise FoldError(f"on_unsupported must be 'error' or 'skip', got {on_unsupported!r}")
    alphas = _alphas(model)
    forced = {n: a for n, a in alphas.items() if band[0] <= a <= band[1]}
    report = FoldReport(model.name, band, chains)
    while True:
        graph = g.read_graph(model, forced)
        segs = g.segments(graph)
        try:
            plans = _plan(graph, segs, chains, on_unsupported, report)
        except _AlphaBlocked as blocked:
            if on_unsupported == "error":
                raise FoldError(f"{blocked.message} (alpha {blocked.alpha} = {forced[blocked.alpha]:.4g} is "
                                f"in the band {list(band)}); pass on_unsupported='skip' "
                                f"(`ran fold --skip-unsupported`) to keep that block unfolded") from None
            report.skipped.append(Skipped([blocked.alpha], f"AFRB not collapsed: {blocked.message}"))
            del forced[blocked.alpha]
            continue
        break

    from ran_keras.rewrite.rebuild import Rebuilder
    builder = Rebuilder(graph, segs, plans)
    new_model = builder.build(name)
    _records(report, graph, builder, forced)
    report.alphas = [{"layer": n, "alpha": a, "collapsed": n in forced} for n, a in alphas.items()]
    for n, a in alphas.items():
        if n not in forced and not any(s.layers == [n] for s in report.skipped):
            report.skipped.append(Skipped([n], f"alpha = {a:.4g} is outside the band {list(band)}: "
                                                  f"kept as an AFRB"))
    _middle_activations(graph, segs, report)
    report.skipped.extend(Skipped([n.name], f"{n.reason}: not folded") for n in graph.nodes if n.reason)
    report.before, report.after = _summary(model), _summary(new_model)
    if samples or sample is not None:
        batch = _sample(model, sample, samples)
        if batch is not None:
            report.output_change = _output_change(model, new_model, batch)
            _drift(report, model, new_model, builder, batch)
    return new_model, report


def _check_band(band) -> Tuple[float, float]:
    """The band by the rule the search uses too (``blocks.check_afrb_band``); None: only alpha = 1."""
    if band is None:
        return (1.0, 1.0)
    try:
        return check_afrb_band(band, "alpha_band")
    except SpecError as err:
        raise FoldError(str(err)) from None


def _alphas(model) -> Dict[str, float]:
    from ran_keras.layers import SharedAlphaPReLU
    return {layer.name: float(layer.alpha.numpy()) for layer in model.layers
            if isinstance(layer, SharedAlphaPReLU) and layer.built}


class _AlphaBlocked(Exception):
    def __init__(self, alpha: str, message: str):
        super().__init__(message)
        self.alpha, self.message = alpha, message


def _plan(graph, segs, chains: str, on_unsupported: str, report: FoldReport) -> Dict[int, List[g.Group]]:
    plans: Dict[int, List[g.Group]] = {}
    blocked_notes: List[Skipped] = []
    for i, seg in enumerate(segs):
        spans = g.required_spans(seg, graph)
        for alpha, (lo, hi) in spans.items():
            problem = g.span_problem(seg, lo, hi)
            if problem:
                raise _AlphaBlocked(alpha, problem)
        groups = g.plan_segment(seg, list(spans.values()), chains)
        blocked = [u for u in seg.units if u.blocker]
        if blocked and len(seg.units) > 1:
            names = [n for u in seg.units for n in u.names]
            if chains == "always" and on_unsupported == "error":
                raise FoldError(f"cannot fold the chain {' -> '.join(names)}: {blocked[0].blocker}; pass "
                                f"on_unsupported='skip' (`ran fold --skip-unsupported`) to fold around it")
            blocked_notes.append(Skipped(names, f"not merged into one conv: {blocked[0].blocker}"))
        elif chains == "always" and len(groups) > 1:
            reason = g.group_blocker(seg.units) or g.group_cost(seg.units)[2]
            if reason:
                blocked_notes.append(Skipped([n for u in seg.units for n in u.names],
                                             f"not folded into one conv: {reason}"))
        if chains != "none" and groups:
            groups[-1].residual = g.residual_add(seg, groups[-1], graph)
        plans[i] = groups
    report.skipped.extend(blocked_notes)
    return plans


def _records(report: FoldReport, graph, builder, forced: Dict[str, float]) -> None:
    for em in builder.emitted:
        group, seg = em.group, em.segment
        units = seg.units[group.start:group.stop]
        layers = [n for u in units for n in u.names]
        alpha_names = sorted({a for before, a in seg.forced_identities
                              if group.start - 1 <= before < group.stop and a in forced})
        if group.required and alpha_names:
            kind = "afrb"
        elif group.merged:
            kind = "chain"
        elif group.residual is not None and not units[0].changed:
            kind = "residual"
        else:
            kind = "bn"
        if group.residual is not None:
            layers.append(group.residual.name)
        alpha = forced[alpha_names[0]] if kind == "afrb" else None
        if kind == "afrb":
            layers = alpha_names + layers
        report.folds.append(FoldRecord(kind, layers, em.layers, group.macs_before, group.macs_after,
                                       group.border_map, em.border_values, group.residual is not None, alpha))


def _middle_activations(graph, segs, report: FoldReport) -> None:
    """Report chains left alone because an activation (or another layer) sits between two linear layers."""
    from ran_keras.backend import keras
    from ran_keras.layers import HardSwish, SharedAlphaPReLU
    kl = keras.layers
    activations = (kl.Activation, kl.ReLU, kl.PReLU, kl.LeakyReLU, kl.ELU, kl.Softmax, kl.ThresholdedReLU,
                   HardSwish)
    last = {seg.nodes[-1].key: seg for seg in segs}
    first = {seg.nodes[0].key: seg for seg in segs}
    for n in graph.nodes:
        if n.kind != "opaque" or len(n.inputs) != 1 or len(n.outputs) != 1:
            continue
        if isinstance(n.layer, SharedAlphaPReLU):
            continue  # reported per alpha
        before = graph.producer.get(n.inputs[0])
        after = graph.sole_consumer(n.outputs[0])
        if before is None or after is None or graph.sole_consumer(n.inputs[0]) is not n:
            continue
        if before.key in last and after.key in first and last[before.key].units and first[after.key].units \
                and last[before.key].units[-1].main is not None and first[after.key].units[0].main is not None:
            names = [last[before.key].units[-1].names[0], n.name, first[after.key].units[0].names[0]]
            what = ("a non-linearity" if isinstance(n.layer, activations)
                    else f"an unsupported layer ({type(n.layer).__name__})")
            report.skipped.append(Skipped(names, f"{n.name} is {what} between two linear layers: not folded"))
    for seg in segs:
        unit = seg.units[-1] if seg.units else None
        if unit is None or unit.activation == "linear":
            continue
        after = graph.sole_consumer(seg.output)
        if after is not None and after.key in first and first[after.key].units \
                and first[after.key].units[0].main is not None:
            report.skipped.append(Skipped([unit.names[0], after.name],
                                          f"{unit.names[0]} has a fused {unit.activation!r} activation: not "
                                          f"folded with {after.name}"))


def _summary(model) -> Dict[str, Any]:
    """Params and MACs (``ran_keras.profile.profile_model``); MACs None when the input size is not fixed."""
    from ran_keras.analysis.profiler import profile_model
    prof = profile_model(model)
    return {"params": prof.params, "trainable_params": prof.trainable_params, "macs": prof.macs,
            "macs_by_kind": prof.macs_by_kind, "layers": len({r.name for r in prof.layers})}


# --- checking on sample data -------------------------------------------------------------------

def _sample(model, sample, samples: int) -> Optional[List[np.ndarray]]:
    """A batch for every model input: the given one; for a square 1- or 3-channel image input,
    offline photos scaled to [-1, 1]; else seeded random data (uniform in [-1, 1] for other image
    inputs, normal for non-image ones); an unknown size counts as 224 (8 for non-image inputs);
    None for several inputs (no check)."""
    if sample is not None:
        batch = sample if isinstance(sample, (list, tuple)) else [sample]
        return [np.asarray(b, np.float32) for b in batch]
    if len(model.inputs) != 1:
        return None
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        rng = np.random.default_rng(0)
        return [rng.normal(size=(samples,) + tuple(d or 8 for d in shape)).astype(np.float32)]
    h, w, c = (d or 224 for d in shape)
    if c in (1, 3) and h == w:
        from ran_keras.data.photos import offline_photos
        photos = offline_photos(samples, h, c, seed=0)
        return [((photos.astype(np.float32) - 127.5) / 127.5)]
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, size=(samples, h, w, c)).astype(np.float32)]


def _predict(model, batch: List[np.ndarray], outputs=None) -> List[np.ndarray]:
    from ran_keras.backend import tf
    n = len(batch[0])
    chunks: List[List[np.ndarray]] = []
    for start in range(0, n, 4):
        part = [b[start:start + 4] for b in batch]
        out = model(part if len(part) > 1 else part[0], training=False)
        chunks.append([np.asarray(t) for t in tf.nest.flatten(out)])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def compare(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> Dict[str, Any]:
    """max |diff|, max |diff| / max |ref|, relative L2, and top-1 agreement for (N, classes) outputs."""
    diffs = [np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)) for r, o in zip(reference, other)]
    ref_max = max(float(np.max(np.abs(r))) for r in reference)
    num = math.sqrt(sum(float(np.sum(np.square(d))) for d in diffs))
    den = math.sqrt(sum(float(np.sum(np.square(np.asarray(r, np.float64)))) for r in reference))
    out = {"max_abs": max(float(np.max(d)) for d in diffs),
           "rel_max": max(float(np.max(d)) for d in diffs) / ref_max if ref_max else 0.0,
           "rel_l2": num / den if den else 0.0}
    r0, o0 = reference[0], other[0]
    if r0.ndim == 2 and r0.shape[1] > 1:
        out["top1_agreement"] = float(np.mean(np.argmax(r0, 1) == np.argmax(o0, 1)))
    return out


def _output_change(model, new_model, batch) -> Dict[str, Any]:
    out = compare(_predict(model, batch), _predict(new_model, batch))
    out["samples"] = int(len(batch[0]))
    return out


def _drift(report: FoldReport, model, new_model, builder, batch) -> None:
    """Relative L2 change at each AFRB fold's output, with every fold upstream of it applied."""
    from ran_keras.backend import keras
    pairs = [(rec, em) for rec, em in zip(report.folds, builder.emitted) if rec.kind == "afrb"]
    if not pairs:
        return
    by_key = {t: n for n in builder.graph.nodes for t in n.outputs}
    old_t = [_tensor(by_key[em.original_output], em.original_output) for _, em in pairs]
    probe_old = keras.Model(model.inputs, old_t)
    probe_new = keras.Model(new_model.inputs, [em.output for _, em in pairs])
    ref, got = _predict(probe_old, batch), _predict(probe_new, batch)
    for (rec, _), r, o in zip(pairs, ref, got):
        rec.drift = compare([r], [o])["rel_l2"]


def _tensor(node, key: str):
    from ran_keras.backend import tf
    return tf.nest.flatten(node.node.outputs)[int(key.rsplit(":", 1)[1])]


# --- text --------------------------------------------------------------------------------------

def format_report(report: FoldReport, limit: int = _TOPS) -> str:
    """The human-readable summary ``ran fold`` prints."""
    from ran_keras.report import fmt_count, fmt_pct, table
    lines = []
    kinds = {k: report.count(k) for k in ("afrb", "chain", "bn", "residual")}
    lines.append(f"{report.model}: {kinds['afrb']} AFRB collapses, {kinds['chain']} chains, {kinds['bn']} "
                 f"BatchNorm folds, {kinds['residual']} residuals folded; {report.border_maps} border maps "
                 f"(alpha band {report.alpha_band[0]:g}..{report.alpha_band[1]:g}, chains={report.chains})")
    b, a = report.before, report.after

    def change(key):
        return fmt_pct(100 * (a[key] - b[key]) / b[key]) if b[key] and a[key] is not None else "-"
    rows = [["params", fmt_count(b["params"]), fmt_count(a["params"]), change("params")],
            ["MACs", fmt_count(b["macs"]), fmt_count(a["macs"]), change("macs")],
            ["layers", b["layers"], a["layers"], "-"]]
    lines.append(table(["", "before", "after", "change"], rows))
    shown = [f for f in report.folds if f.kind != "bn"]
    if shown:
        lines.append("")
        rows = []
        for f in shown[:limit]:
            rows.append([f.kind, _short(f.layers), _short(f.into), fmt_count(f.macs_before),
                         fmt_count(f.macs_after), "yes" if f.border_map else "-",
                         "-" if f.alpha is None else f"{f.alpha:.4g}",
                         "-" if f.drift is None else f"{f.drift:.2e}"])
        lines.append(table(["fold", "layers", "into", "MACs before", "after", "border map", "alpha", "drift"],
                           rows))
        if len(shown) > limit:
            lines.append(f"... and {len(shown) - limit} more (--json lists all)")
    if report.output_change:
        oc = report.output_change
        text = (f"output change on {oc['samples']} sample images: max |diff| {oc['max_abs']:.3g}, "
                f"relative {oc['rel_max']:.3g} (max) / {oc['rel_l2']:.3g} (L2)")
        if "top1_agreement" in oc:
            text += f", top-1 agreement {100 * oc['top1_agreement']:.0f}%"
        lines.append("")
        lines.append(text + ("" if not report.exact else " - exact folds only: float32 rounding"))
    if report.border_maps:
        lines.append(f"{report.border_maps} folds carry a border map (a BorderBias layer: one ADD with a "
                     f"constant on the NPU); see WORKSPACE.md, 'Folding'.")
    if report.skipped:
        lines.append("")
        lines.append(f"left alone ({len(report.skipped)}):")
        for s in report.skipped[:limit]:
            lines.append(f"  {_short(s.layers)}: {s.reason}")
        if len(report.skipped) > limit:
            lines.append(f"  ... and {len(report.skipped) - limit} more (--json lists all)")
    return "\n".join(lines)


def _short(names: Sequence[str]) -> str:
    """'m_stage1_block1_{alpha,expand,...}' style: the shared prefix once, then the op names."""
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(list(names))
    prefix = prefix[:prefix.rfind("_") + 1] if "_" in prefix else ""
    rest = [n[len(prefix):] for n in names]
    inner = ",".join(rest) if len(rest) <= 3 else f"{rest[0]},..,{rest[-1]}"
    return f"{prefix}{{{inner}}}"


__all__ = ["fold", "FoldReport", "FoldRecord", "Skipped", "FoldError", "compare", "format_report",
           "AFRB_BAND"]
