"""EfficientNet-Lite-B0: EfficientNet-B0 without squeeze-excite, ReLU6, stem and head unscaled."""

from __future__ import annotations

from ran_keras.models._registry import PaperFigures, register
from ran_keras.spec import BlockSpec, NetworkSpec, with_activation

# (expansion, kernel, channels, repeats, stride) of EfficientNet-B0's seven MBConv stages
B0_STAGES = [(1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2),
             (6, 5, 112, 3, 1), (6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]


def efficientnet_lite_b0_spec(name: str = "efficientnet_lite_b0") -> NetworkSpec:
    stages = tuple(
        tuple(BlockSpec("ibn", channels=c, kernel=k, stride=s if j == 0 else 1, expansion=e) for j in range(n))
        for e, k, c, n, s in B0_STAGES)
    return NetworkSpec(
        name=name, family="efficientnet_lite", activation="relu6", classifier_dropout=0.2,
        description="EfficientNet-Lite-B0: MBConv without SE, ReLU6, stem/head unscaled",
        stem=(BlockSpec("conv", channels=32, kernel=3, stride=2),), stages=stages,
        head=(BlockSpec("conv", channels=1280, kernel=1),), input_mean=(127.0,), input_std=(128.0,))


@register("efficientnet_lite_b0", family="efficientnet_lite", description="EfficientNet-Lite-B0 (ReLU6)",
          paper=PaperFigures("4.7M", "385M", "Tables 1-2", top1_100ep=72.81, top1_final=74.4,
                             fps_u55=1.0, fps_u65=1.0, note="the FPS reference; [21] reports 75.1% top-1"))
def efficientnet_lite_b0() -> NetworkSpec:
    return efficientnet_lite_b0_spec()


@register("efficientnet_lite_b0_hswish", family="efficientnet_lite",
          description="EfficientNet-Lite-B0 with hard-swish",
          paper=PaperFigures("4.7M", "385M", "Tables 1-2", top1_100ep=73.82, top1_final=75.6,
                             fps_u55=1.0, fps_u65=1.0))
def efficientnet_lite_b0_hswish() -> NetworkSpec:
    spec = with_activation(efficientnet_lite_b0_spec("efficientnet_lite_b0_hswish"), "hard_swish")
    return spec.replace(description="EfficientNet-Lite-B0 with hard-swish instead of ReLU6")
