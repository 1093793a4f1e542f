"""ResNet-18 in the torchvision layout (7x7 stem + max-pool, four stages of two basic blocks), with
torchvision's numerics: symmetric ('PyTorch') padding, BatchNorm epsilon 1e-5 and momentum 0.1
(Keras' 0.9), so torchvision weights give torchvision's outputs. The max pool's padding is zeros:
it follows a ReLU, so zeros give the maxima of PyTorch's -inf padding, and Vela fuses a zero pad
into the stem conv (mirrored borders, exact for any input, cost a separate pass on Ethos-U)."""

from __future__ import annotations

from ran_keras.models._registry import PaperFigures, register
from ran_keras.spec import IMAGENET_MEAN, IMAGENET_STD, BlockSpec, NetworkSpec

@register("resnet18", family="resnet", description="ResNet-18 (torchvision layout)",
          paper=PaperFigures("11.7M", "1.8B", "Table 2", top1_final=71.2, fps_u55=0.46, fps_u65=0.48,
                             note="accuracy from [15], 120 epochs"))
def resnet18() -> NetworkSpec:
    stages = tuple(
        tuple(BlockSpec("basic", channels=c, stride=s if j == 0 else 1) for j in range(2))
        for c, s in ((64, 1), (128, 2), (256, 2), (512, 2)))
    return NetworkSpec(
        name="resnet18", family="resnet", activation="relu", description="ResNet-18, torchvision layout",
        stem=(BlockSpec("conv", channels=64, kernel=7, stride=2), BlockSpec("maxpool", kernel=3, stride=2, fill="zeros")),
        stages=stages, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD, padding="symmetric", bn_epsilon=1e-5,
        bn_momentum=0.9)
