"""Block kinds, one family per module: ``plain`` (conv, dw, maxpool), ``mobile`` (ibn, collapsed,
afrb1/2/3), ``resnet`` (basic), ``convnext`` (convnext, convnext_codesign, convnext_down). ``base`` holds the
schema machinery and the registry; importing this package registers every kind."""

from ran_keras.blocks.base import KINDS, REQUIRED, BlockKind, Field, get_kind, register_kind
from ran_keras.blocks import plain, mobile, resnet, convnext  # noqa: F401,I001  (registration order = doc order)
from ran_keras.blocks.mobile import AFRB_BAND, AFRB_KINDS, check_afrb_band

__all__ = ["AFRB_BAND", "AFRB_KINDS", "BlockKind", "Field", "KINDS", "REQUIRED", "check_afrb_band", "get_kind",
           "register_kind"]
