"""ConvNeXt-T/S/B (Liu et al. 2022) and RAN-i-T/S/B: ConvNeXt-T scaled in width and depth.

ConvNeXt: a 4x4 stride-4 conv + LayerNorm stem; four stages of ConvNeXt blocks (7x7 depthwise,
LayerNorm, 1x1 to 4C, GELU, 1x1 to C, layer scale 1e-6, stochastic depth, identity residual);
LayerNorm + 2x2 stride-2 conv before stages 2-4; average pool, LayerNorm, dense. As in the
reference (facebookresearch/ConvNeXt, which RAN-i builds on): the stem and downsampling convs are
unpadded, and every conv/linear kernel starts from N(0, 0.02) (``weight_init``).

RAN-i (paper Sec. 3.3-3.4, Appendix D, Table 7): ConvNeXt-T with widths ``round(w * wm)`` and
depths ``round(d * dm)``, the highest-NN-Mass candidates the paper found for its three budgets.

Stochastic depth follows ConvNeXt's linear rule: block i of n (network order, from 0) drops its
branch with probability ``drop_path * i / (n - 1)``. Each block stores its own rate in the spec
(``drop_path``), so a spec JSON carries everything training needs; ``ran_keras.spec.with_drop_path``
re-applies the rule for another model-level rate, ``ran_keras.spec.scale_width_depth`` scales.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ran_keras.models._registry import PaperFigures, register
from ran_keras.spec import (IMAGENET_MEAN, IMAGENET_STD, BlockSpec, NetworkSpec, prune_hidden, scale_width_depth,
                            to_codesign, with_drop_path)

#: family configs: stage widths, stage depths, model-level drop_path (ConvNeXt paper's ImageNet-1K rates)
CONVNEXT_CONFIGS = {
    "convnext_tiny": dict(label="ConvNeXt-T", widths=(96, 192, 384, 768), depths=(3, 3, 9, 3), drop_path=0.1),
    "convnext_small": dict(label="ConvNeXt-S", widths=(96, 192, 384, 768), depths=(3, 3, 27, 3), drop_path=0.4),
    "convnext_base": dict(label="ConvNeXt-B", widths=(128, 256, 512, 1024), depths=(3, 3, 27, 3), drop_path=0.5),
}

#: RAN-i (Table 7): width multiplier, depth multiplier and drop_path on ConvNeXt-T
RAN_I_CONFIGS = {
    "ran_i_tiny": dict(label="RAN-i-T", wm=0.666, dm=1.65, drop_path=0.1),
    "ran_i_small": dict(label="RAN-i-S", wm=0.789, dm=1.65, drop_path=0.2),
    "ran_i_base": dict(label="RAN-i-B", wm=0.9105, dm=2.30, drop_path=0.4),
}


def convnext_spec(name: str, widths: Sequence[int], depths: Sequence[int], drop_path: float = 0.0, *,
                  kernel: int = 7, expansion: float = 4, layer_scale: Optional[float] = 1e-6,
                  family: str = "convnext", description: str = "") -> NetworkSpec:
    """A ConvNeXt-family spec from stage widths and depths (the one generic ConvNeXt builder)."""
    if len(widths) != len(depths) or not widths:
        raise ValueError(f"widths and depths must be non-empty and of equal length, got {list(widths)} "
                         f"and {list(depths)}")
    stem = (BlockSpec("conv", channels=widths[0], kernel=4, stride=4, norm="ln", bias=True, activation="linear",
                      padding="valid"),)
    stages = []
    for i, (width, depth) in enumerate(zip(widths, depths)):
        down = (BlockSpec("convnext_down", channels=width),) if i else ()
        block = BlockSpec("convnext", channels=width, kernel=kernel, expansion=expansion, layer_scale=layer_scale)
        stages.append(down + (block,) * depth)
    spec = NetworkSpec(name=name, family=family, activation="gelu", stem=stem, stages=tuple(stages),
                       classifier_norm="ln", input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD,
                       weight_init="trunc_normal_0.02",
                       description=description or f"ConvNeXt, widths {list(widths)}, depths {list(depths)}")
    return with_drop_path(spec, drop_path)


def _convnext(name: str) -> NetworkSpec:
    cfg = CONVNEXT_CONFIGS[name]
    return convnext_spec(name, cfg["widths"], cfg["depths"], cfg["drop_path"],
                         description=f"{cfg['label']}: widths {list(cfg['widths'])}, "
                                     f"depths {list(cfg['depths'])}, drop_path {cfg['drop_path']}")


def ran_i_spec(name: str) -> NetworkSpec:
    cfg = RAN_I_CONFIGS[name]
    spec = scale_width_depth(_convnext("convnext_tiny"), cfg["wm"], cfg["dm"], name=name, drop_path=cfg["drop_path"],
                          description=f"{cfg['label']}: ConvNeXt-T at wm {cfg['wm']}, "
                                      f"dm {cfg['dm']}, drop_path {cfg['drop_path']} (Table 7)")
    return spec.replace(family="ran_i")


_CONVNEXT_NOTE = "figures as quoted in the paper (Table 4, Fig. 7); the model is [39]'s"


@register("convnext_tiny", family="convnext", description="ConvNeXt-T: widths 96-768, depths 3,3,9,3",
          paper=PaperFigures("28.6M", "4.47B", "Table 4, Fig. 7", top1_100ep=80.2,
                             note=_CONVNEXT_NOTE + "; 80.2% is the paper's 100-epoch run (Table 4)"))
def convnext_tiny() -> NetworkSpec:
    return _convnext("convnext_tiny")


@register("convnext_small", family="convnext", description="ConvNeXt-S: widths 96-768, depths 3,3,27,3",
          paper=PaperFigures("50.2M", "8.7B", "Fig. 7, Sec. 3.4", note=_CONVNEXT_NOTE))
def convnext_small() -> NetworkSpec:
    return _convnext("convnext_small")


@register("convnext_base", family="convnext", description="ConvNeXt-B: widths 128-1024, depths 3,3,27,3",
          paper=PaperFigures("88.6M", "15.4B", "Fig. 7, Sec. 3.4", note=_CONVNEXT_NOTE))
def convnext_base() -> NetworkSpec:
    return _convnext("convnext_base")


@register("ran_i_tiny", family="ran_i", description="RAN-i-T: ConvNeXt-T at wm 0.666, dm 1.65 (Table 7)",
          paper=PaperFigures("20.76M", "3.3B", "Table 7", top1_final=82.03, note="300 epochs"))
def ran_i_tiny() -> NetworkSpec:
    return ran_i_spec("ran_i_tiny")


@register("ran_i_small", family="ran_i", description="RAN-i-S: ConvNeXt-T at wm 0.789, dm 1.65 (Table 7)",
          paper=PaperFigures("28.93M", "4.59B", "Table 7", top1_final=82.63, note="300 epochs"))
def ran_i_small() -> NetworkSpec:
    return ran_i_spec("ran_i_small")


@register("ran_i_base", family="ran_i", description="RAN-i-B: ConvNeXt-T at wm 0.9105, dm 2.30 (Table 7)",
          paper=PaperFigures("52.89M", "8.45B", "Table 7", top1_final=83.61, note="300 epochs"))
def ran_i_base() -> NetworkSpec:
    return ran_i_spec("ran_i_base")


# --- block and activation co-design (paper Sec. 4, Fig. 8, Table 4): ConvNeXt-T variants ------------

_TABLE4 = "Table 4 (100 epochs, ImageNet)"


@register("convnext_tiny_pruned40", family="convnext",
          description="ConvNeXt-T, hidden layers 40% channel-pruned (2.4w)",
          paper=PaperFigures("18.2M", "2.8B", _TABLE4, top1_100ep=78.9))
def convnext_tiny_pruned40() -> NetworkSpec:
    return prune_hidden(_convnext("convnext_tiny"), 0.4, name="convnext_tiny_pruned40")


@register("convnext_tiny_pruned27", family="convnext",
          description="ConvNeXt-T, hidden layers 27.5% channel-pruned (2.9w)",
          paper=PaperFigures("21.5M", "3.32B", _TABLE4, top1_100ep=79.3))
def convnext_tiny_pruned27() -> NetworkSpec:
    return prune_hidden(_convnext("convnext_tiny"), 0.275, name="convnext_tiny_pruned27")


@register("convnext_tiny_codesign_a", family="convnext",
          description="Model A: 40% of GELUs removed, lower branch one w->w 1x1",
          paper=PaperFigures("21.5M", "3.32B", _TABLE4, top1_100ep=79.3))
def convnext_tiny_codesign_a() -> NetworkSpec:
    return to_codesign(_convnext("convnext_tiny"), 0.4, "none", name="convnext_tiny_codesign_a")


@register("convnext_tiny_codesign_b", family="convnext",
          description="Model B: Model A with psi = GELU on the lower branch",
          paper=PaperFigures("21.5M", "3.32B", _TABLE4, top1_100ep=79.4))
def convnext_tiny_codesign_b() -> NetworkSpec:
    return to_codesign(_convnext("convnext_tiny"), 0.4, "gelu", name="convnext_tiny_codesign_b")


@register("convnext_tiny_codesign_c", family="convnext",
          description="Model C: Model A with psi = EXP on the lower branch",
          paper=PaperFigures("21.5M", "3.32B", _TABLE4, top1_100ep=79.7, note="the paper reports NaN losses with EXP"))
def convnext_tiny_codesign_c() -> NetworkSpec:
    return to_codesign(_convnext("convnext_tiny"), 0.4, "exp", name="convnext_tiny_codesign_c")
