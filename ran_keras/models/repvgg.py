"""RepVGG-A0 in its deploy form: plain 3x3 convs with bias and ReLU (branches already merged)."""

from __future__ import annotations

from ran_keras.models._registry import PaperFigures, register
from ran_keras.spec import IMAGENET_MEAN, IMAGENET_STD, BlockSpec, NetworkSpec

A0_WIDTHS = (48, 48, 96, 192, 1280)
A0_DEPTHS = (1, 2, 4, 14, 1)


@register("repvgg_a0", family="repvgg", description="RepVGG-A0, deploy form",
          paper=PaperFigures("8.3M", "1.4B", "Table 2", top1_final=72.4, fps_u55=0.72, fps_u65=0.69,
                             note="accuracy from [15], 120 epochs"))
def repvgg_a0() -> NetworkSpec:
    stages = tuple(
        tuple(BlockSpec("conv", channels=w, kernel=3, stride=2 if j == 0 else 1, norm=None) for j in range(d))
        for w, d in zip(A0_WIDTHS, A0_DEPTHS))
    return NetworkSpec(name="repvgg_a0", family="repvgg", activation="relu", stages=stages,
                       description="RepVGG-A0 deploy form: widths 48/48/96/192/1280, depths 1/2/4/14/1",
                       input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
