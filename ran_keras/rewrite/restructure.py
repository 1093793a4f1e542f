"""ConvNeXt -> co-design, and co-design -> folded, on built Keras models (the Keras side of
``ran_keras.rewrite.codesign``, which holds the math).

* ``linearise(model, spec, fraction, criterion)``: a trained ConvNeXt (blocks of kind 'convnext')
  becomes a co-design network in the 'expanded' form: each block's chosen hidden channels lose
  their activation and are kept as the lower branch C -> n -> C. This changes the function (the
  activations are gone); fine-tune it, then fold.
* ``fold_codesign(model, spec)``: every 'convnext_codesign' block in the 'expanded' form becomes
  the 'folded' form, its lower branch one C -> C 1x1 convolution: exact (float64 math).

Both rebuild the model from the new spec under the same name and copy every other weight by
layer name, so the result is an ordinary ran_keras model of a spec (profile, export, save).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras.blocks.convnext import codesign_split
from ran_keras.report import fmt_count
from ran_keras.rewrite import codesign
from ran_keras.rewrite.linear import FoldError, fold_scale_shift
from ran_keras.spec import NetworkSpec, map_blocks, to_codesign


@dataclass
class BlockChange:
    block: str                         # layer-name prefix, e.g. 'cx_stage1_block2'
    hidden: int                        # hidden channels of the expanded MLP
    linear_count: int                  # of which linear (the lower branch)
    criterion: str                     # how they were chosen ('last', 'linearity'; folds: 'as trained')
    linear: Optional[List[int]] = None  # linearise: their indices in the original block
    layer_scale_absorbed: bool = False  # fold: the layer scale went into both branches' last convs


@dataclass
class RestructureReport:
    """What ``linearise`` / ``fold_codesign`` did."""
    model: str
    action: str                        # 'linearise' or 'fold'
    blocks: List[BlockChange] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None
    output_change: Optional[Dict[str, float]] = None   # max |new - old| / max |old| on the sample

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.action} {self.model}: {len(self.blocks)} blocks"]
        for b in self.blocks[:6]:
            what = "folded into one C -> C 1x1" if self.action == "fold" else f"linear ({b.criterion})"
            what += "; layer scale absorbed" if b.layer_scale_absorbed else ""
            lines.append(f"  {b.block}: {b.linear_count} of {b.hidden} hidden channels {what}")
        if len(self.blocks) > 6:
            lines.append(f"  ... {len(self.blocks) - 6} more")
        lines.append(f"params {fmt_count(self.params_before)} -> {fmt_count(self.params_after)}; "
                     f"MACs {fmt_count(self.macs_before)} -> {fmt_count(self.macs_after)}")
        if self.output_change is not None:
            lines.append(f"output change on the sample: max relative {self.output_change['max_relative']:.3g}")
        return "\n".join(lines)


def _head(model) -> Dict[str, Any]:
    """build_model arguments that rebuild ``model``'s head: classes, include_top, classifier activation."""
    top = [layer for layer in model.layers if layer.name == f"{model.name}_predictions"]
    if not top:
        if isinstance(model.output, (list, tuple)):
            raise FoldError(f"{model.name}: a model with several outputs (features_only) is not supported; "
                            f"restructure the classifier and take its features afterwards")
        return {"include_top": False, "pooling": None}
    act = getattr(top[0].activation, "__name__", "linear")
    return {"classes": top[0].units, "classifier_activation": None if act == "linear" else act}


def _rebuild(model, new_spec: NetworkSpec, weights: Dict[str, List[np.ndarray]]):
    """``new_spec`` built like ``model``, with ``weights`` by layer name and the rest copied from ``model``."""
    from ran_keras.builder import build_model
    new = build_model(new_spec, tuple(model.input_shape[1:]), name=model.name, **_head(model))
    old = {layer.name: layer for layer in model.layers}
    for layer in new.layers:
        if not layer.weights:
            continue
        source = weights.get(layer.name)
        if source is None:
            if layer.name not in old:
                raise FoldError(f"{layer.name}: no weights for this layer in {model.name}")
            source = old[layer.name].get_weights()
        layer.set_weights([np.asarray(w, np.float32).reshape(v.shape) for w, v in zip(source, layer.weights)])
    return new


def _check_model(model, spec: NetworkSpec) -> None:
    names = {layer.name for layer in model.layers}
    for site in spec.sites:
        if site.block.kind in ("convnext", "convnext_codesign") and f"{model.name}_{site.prefix}_dw" not in names:
            raise FoldError(f"model {model.name!r} was not built from spec {spec.name!r}: it has no layer "
                            f"{model.name}_{site.prefix}_dw; pass the spec it was built from")


def _kernel(layer) -> np.ndarray:
    """A 1x1 Conv2D kernel as a (cin, cout) float64 matrix."""
    w = layer.get_weights()[0]
    return np.asarray(w, np.float64).reshape(w.shape[-2], w.shape[-1])


def _sq_errors(model, prefixes: Sequence[str], calibration) -> Dict[str, np.ndarray]:
    """Per block, E[(act(z) - z)^2] per hidden channel over ``calibration`` (batches of inputs)."""
    from ran_keras.backend import keras
    outs = [model.get_layer(f"{p}_{op}").output for p in prefixes for op in ("expand", "act")]
    probe = keras.Model(model.input, outs)
    sums: Dict[str, np.ndarray] = {}
    counts: Dict[str, int] = {}
    for batch in calibration:
        values = probe(np.asarray(batch, np.float32), training=False)
        for i, p in enumerate(prefixes):
            z, a = (np.asarray(v, np.float64) for v in values[2 * i:2 * i + 2])
            sums[p] = sums.get(p, 0) + ((a - z) ** 2).reshape(-1, z.shape[-1]).sum(axis=0)
            counts[p] = counts.get(p, 0) + int(np.prod(z.shape[:-1]))
    if not counts:
        raise FoldError("criterion 'linearity' needs calibration batches; got none")
    return {p: s / counts[p] for p, s in sums.items()}


def linearise(model, spec: NetworkSpec, fraction: float = 0.4, criterion: str = "last", *, psi: str = "linear",
              calibration=None) -> Tuple[Any, NetworkSpec, RestructureReport]:
    """Turn ``model`` (built from ``spec``, with 'convnext' blocks) into the co-design network in
    the 'expanded' form: ``fraction`` of each block's hidden channels chosen by ``criterion``
    ('last' or 'linearity': needs ``calibration``, an iterable of input batches) lose the
    activation and form the lower branch; ``psi`` (default none) follows it. Returns
    ``(new_model, new_spec, report)``; with ``psi`` none the new model equals the masked block."""
    if criterion not in codesign.CRITERIA:
        raise FoldError(f"criterion must be one of {', '.join(map(repr, codesign.CRITERIA))}, got {criterion!r}")
    if criterion == "linearity" and calibration is None:
        raise FoldError("criterion 'linearity' needs calibration data (input batches); 'last' needs none")
    new_spec = to_codesign(spec, fraction, psi, lower="expanded")
    _check_model(model, spec)
    sites = [(old, new) for old, new in zip(spec.sites, new_spec.sites) if old.block.kind == "convnext"]
    prefixes = [f"{model.name}_{old.prefix}" for old, _ in sites]
    errors = _sq_errors(model, prefixes, calibration) if criterion == "linearity" else {}
    report = RestructureReport(model.name, "linearise")
    weights: Dict[str, List[np.ndarray]] = {}
    for (old, new), p in zip(sites, prefixes):
        w1, w2 = _kernel(model.get_layer(f"{p}_expand")), _kernel(model.get_layer(f"{p}_project"))
        b1, b2 = model.get_layer(f"{p}_expand").get_weights()[1], model.get_layer(f"{p}_project").get_weights()[1]
        count = codesign_split(new.block, new.in_channels)[1]
        scores = codesign.linearity_scores(errors[p], w2) if p in errors else None
        linear = codesign.choose_linear(w1.shape[1], count, criterion, scores)
        (u1, ub, u2), (l1, lb, l2) = codesign.split_hidden(w1, b1, w2, linear)
        weights.update({f"{p}_expand": [u1, ub], f"{p}_project": [u2, b2],
                        f"{p}_lower_expand": [l1, lb], f"{p}_lower_project": [l2]})
        report.blocks.append(BlockChange(p, w1.shape[1], len(linear), criterion, linear.tolist()))
    new_model = _rebuild(model, new_spec, weights)
    _costs(report, spec, new_spec, model)
    return new_model, new_spec, report


def fold_codesign(model, spec: NetworkSpec, *, sample=None,
                  absorb_layer_scale: bool = False) -> Tuple[Any, NetworkSpec, RestructureReport]:
    """Fold every 'expanded' co-design block of ``model`` (built from ``spec``) into the 'folded' form:
    the lower branch C -> n -> C becomes one C -> C 1x1 conv, exactly. ``absorb_layer_scale``: in
    blocks with psi none, also fold the layer scale into both branches' last convs (exact,
    gamma (a + b) = gamma a + gamma b; it spares Ethos-U one full-size MUL per block, which the TFLite
    converter cannot fold after the branches' ADD). ``sample``: an input batch to measure the output
    change on. Returns ``(new_model, new_spec, report)``."""
    _check_model(model, spec)
    plan = {}
    for s in spec.sites:
        if s.block.kind == "convnext_codesign":
            absorb = absorb_layer_scale and s.block.psi == "linear" and s.block.layer_scale is not None
            if s.block.lower == "expanded" or absorb:
                plan[s.path] = absorb
    if not plan:
        raise FoldError(f"{spec.name} has no 'convnext_codesign' blocks with lower 'expanded' to fold"
                        + (" nor with psi none and a layer scale" if absorb_layer_scale else ""))

    def change(s):
        if s.path not in plan:
            return s.block
        return s.block.replace(lower="folded", **({"layer_scale": None} if plan[s.path] else {}))

    new_spec = map_blocks(spec, change)
    report = RestructureReport(model.name, "fold")
    weights: Dict[str, List[np.ndarray]] = {}
    for site in spec.sites:
        if site.path in plan:
            p = f"{model.name}_{site.prefix}"
            weights.update(_folded_weights(model, p, site.block.lower, plan[site.path]))
            upper, linear = codesign_split(site.block, site.in_channels)
            report.blocks.append(BlockChange(p, upper + linear, linear, "as trained",
                                             layer_scale_absorbed=plan[site.path]))
    new_model = _rebuild(model, new_spec, weights)
    _costs(report, spec, new_spec, model)
    if sample is not None:
        report.output_change = output_change(model, new_model, sample)
    return new_model, new_spec, report


def _folded_weights(model, p: str, lower: str, absorb: bool) -> Dict[str, List[np.ndarray]]:
    """The 'folded' lower conv of block ``p`` and, when ``absorb``, both last convs times the layer scale."""
    if lower == "expanded":
        expand = model.get_layer(f"{p}_lower_expand")
        project = _kernel(model.get_layer(f"{p}_lower_project"))
        w, b = codesign.fold_lower(_kernel(expand), expand.get_weights()[1], project)
    else:
        w, b = (np.asarray(a, np.float64) for a in model.get_layer(f"{p}_lower").get_weights())
    out = {f"{p}_lower": [w, b]}
    if absorb:
        gamma = model.get_layer(f"{p}_layer_scale").get_weights()[0]
        pw, pb = model.get_layer(f"{p}_project").get_weights()
        out = {f"{p}_lower": list(fold_scale_shift(w, b, gamma, 0.0)),
               f"{p}_project": list(fold_scale_shift(pw, pb, gamma, 0.0))}
    return out


def output_change(model, new_model, sample) -> Dict[str, float]:
    """max |new - old| / max |old| (and the absolute maximum) of the two models' outputs on ``sample``."""
    x = np.asarray(sample, np.float32)
    old = np.asarray(model(x, training=False), np.float64)
    new = np.asarray(new_model(x, training=False), np.float64)
    diff = float(np.max(np.abs(new - old)))
    return {"max_abs": diff, "max_relative": diff / max(float(np.max(np.abs(old))), 1e-30)}


def _costs(report: RestructureReport, spec: NetworkSpec, new_spec: NetworkSpec, model) -> None:
    from ran_keras.analysis.profiler import profile_spec
    shape = tuple(model.input_shape[1:])
    head = _head(model)
    kwargs = dict(classes=head.get("classes", 1000), include_top=head.get("include_top", True))
    before, after = profile_spec(spec, shape, **kwargs), profile_spec(new_spec, shape, **kwargs)
    report.params_before, report.params_after = before.params, after.params
    report.macs_before, report.macs_after = before.macs, after.macs
