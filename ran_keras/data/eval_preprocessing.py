"""The evaluation preprocessing of each reference implementation: encoded image -> square float32 pixels.

Published accuracies are measured with their code's own resize and crop; a different one costs a
few tenths of a point. Each recipe here reproduces one, as data (``Preprocessing``) plus one function:

* ``tf-crop-bilinear``: the RAN-e reference (NVIDIA's EfficientNet TF2 code): a centre square of
  ``size / (size + 32)`` of the short side (offset ``(h - crop + 1) // 2``), decoded by TensorFlow
  (``decode_and_crop_jpeg`` for JPEGs), resized with ``tf.compat.v1.image.resize`` bilinear (no
  half-pixel centres).
* ``pil-resize-crop-bicubic``: facebookresearch ConvNeXt / RAN-i and timm: PIL decode, short side
  resized to ``int(size / 0.875)`` with PIL bicubic (torchvision ``Resize``), centre crop of
  ``size`` (torchvision ``CenterCrop``: offset ``round((h - size) / 2)``).
* ``pil-resize-crop-bilinear``: torchvision's ImageNet recipe (ResNet): the same with bilinear.

Pixels stay on the 0-255 scale; normalisation is the spec's (``ran_keras.data.photos.normalize``).
numpy, PIL and TensorFlow are imported when an image is processed, so ``ran``'s start-up (which
lists the recipes in ``ran eval --help``) stays light.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Dict

from ran_keras.errors import RanError

CROP_PADDING = 32


@dataclass(frozen=True)
class Preprocessing:
    name: str
    order: str            # 'crop-resize' (TensorFlow) | 'resize-crop' (torchvision)
    interpolation: str    # 'bilinear' | 'bicubic'
    doc: str
    crop_fraction: float = 0.875


RECIPES: Dict[str, Preprocessing] = {p.name: p for p in (
    Preprocessing("tf-crop-bilinear", "crop-resize", "bilinear",
                  "RAN-e reference: centre crop size/(size+32), TF decode, tf.compat.v1 bilinear resize"),
    Preprocessing("pil-resize-crop-bicubic", "resize-crop", "bicubic",
                  "ConvNeXt / RAN-i / timm: PIL bicubic resize of the short side to size/0.875, centre crop"),
    Preprocessing("pil-resize-crop-bilinear", "resize-crop", "bilinear",
                  "torchvision (ResNet): PIL bilinear resize of the short side to size/0.875, centre crop"),
)}

#: each family's reference recipe (others: the TensorFlow one)
FAMILY_RECIPES = {"ran_e": "tf-crop-bilinear", "convnext": "pil-resize-crop-bicubic",
                  "ran_i": "pil-resize-crop-bicubic", "resnet": "pil-resize-crop-bilinear",
                  "efficientnet_lite": "pil-resize-crop-bicubic"}


class PreprocessingError(RanError):
    """An unknown recipe or an image that cannot be decoded."""


def get_recipe(name: str) -> Preprocessing:
    if name not in RECIPES:
        raise PreprocessingError(f"unknown preprocessing {name!r}; accepted: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_for(spec) -> Preprocessing:
    """The reference recipe of a spec's family (``FAMILY_RECIPES``)."""
    return RECIPES[FAMILY_RECIPES.get(getattr(spec, "family", ""), "tf-crop-bilinear")]


def preprocess(data: bytes, size: int, recipe: Preprocessing):
    """An encoded image as (size, size, 3) float32 pixels in [0, 255], the recipe's way."""
    if recipe.order == "crop-resize":
        return _tf_crop_resize(data, size, recipe)
    return _pil_resize_crop(data, size, recipe)


def _tf_crop_resize(data: bytes, size: int, recipe: Preprocessing):
    import numpy as np

    from ran_keras.backend import tf
    jpeg = data[:3] == b"\xff\xd8\xff"
    shape = tf.image.extract_jpeg_shape(data) if jpeg else tf.shape(_tf_decode(data))
    h, w = int(shape[0]), int(shape[1])
    crop = int(np.float32(size / (size + CROP_PADDING)) * np.float32(min(h, w)))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    if jpeg:
        image = tf.image.decode_and_crop_jpeg(data, [top, left, crop, crop], channels=3)
    else:
        image = _tf_decode(data)[top:top + crop, left:left + crop]
    method = tf.image.ResizeMethod.BILINEAR if recipe.interpolation == "bilinear" else tf.image.ResizeMethod.BICUBIC
    return tf.compat.v1.image.resize(image, [size, size], method=method, align_corners=False).numpy().astype(np.float32)


def _tf_decode(data: bytes):
    from ran_keras.backend import tf
    try:
        return tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as err:
        raise PreprocessingError(f"cannot decode an image: {err.message.splitlines()[0]}") from None


def _pil_resize_crop(data: bytes, size: int, recipe: Preprocessing):
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise PreprocessingError(f"cannot decode an image: {err}") from None
    short = int(size / recipe.crop_fraction)
    w, h = image.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resample = Image.BILINEAR if recipe.interpolation == "bilinear" else Image.BICUBIC
    image = image.resize(new, resample)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), np.float32)


__all__ = ["Preprocessing", "RECIPES", "FAMILY_RECIPES", "PreprocessingError", "get_recipe", "recipe_for", "preprocess"]
