"""The built-in model zoo. Importing this package registers every model."""

from ran_keras.models import ran_e, efficientnet_lite, resnet, repvgg  # noqa: F401,I001  (paper table order)
from ran_keras.models import convnext  # noqa: F401,E402  (ConvNeXt-T/S/B, RAN-i-T/S/B)
