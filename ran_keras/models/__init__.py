"""The built-in model zoo. Importing this package registers every model."""

from ran_keras.models import ran_e, efficientnet_lite, resnet, repvgg  # noqa: F401,I001  (paper table order)
