"""Image augmentation as stateless TensorFlow ops: AutoAugment, RandAugment, mixup and CutMix.

Our own implementation of the published policies: the AutoAugment ImageNet policy (Cubuk et al.
2019, the 25 sub-policies known as "v0" in the TF EfficientNet reference, which the RAN-e recipe
follows) and RandAugment (Cubuk et al. 2020) over the same operations. No maintained
implementation fits our stack: tf-models-official 2.20 pins TensorFlow 2.20 and tf_keras 2.20,
keras-cv needs Keras 3.

Every random choice takes an explicit ``seed`` (int32/int64 tensor of shape [2]) so that a
pipeline that seeds each example from (run seed, epoch, example index) is reproducible, and a
resumed run sees exactly the augmentations an uninterrupted one would have seen.

Images are float32 tensors in [0, 255] of shape (H, W, 3). Magnitudes are levels in [0, 10]
mapped to each operation's published range (``LEVEL_RANGES``).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

from ran_keras.backend import tf

MAX_LEVEL = 10.0
FILL = 128.0   # grey fill for pixels a geometric op exposes

#: AutoAugment ImageNet policy: 25 sub-policies of two (op, probability, level) steps.
IMAGENET_POLICY: Tuple[Tuple[Tuple[str, float, int], ...], ...] = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

#: RandAugment's operations (as in timm, which the ConvNeXt recipe uses; no Cutout).
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
                   "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
                   "TranslateY")

#: (value at level 0, value at level 10), linear in between: the AutoAugment paper's ranges, used by
#: ``apply_op``. Rotate in degrees; Shear as the shear factor; Translate as a fraction of the width
#: (X) or height (Y); Color/Contrast/Brightness/Sharpness as the blend factor; Posterize as the bits
#: kept (rounded down); Solarize as the threshold; SolarizeAdd as what is added to pixels below 128.
#: Geometric ops (Rotate, Shear, Translate) get a random sign.
LEVEL_RANGES: Dict[str, Tuple[float, float]] = {
    "Rotate": (0.0, 30.0), "ShearX": (0.0, 0.3), "ShearY": (0.0, 0.3),
    "TranslateX": (0.0, 0.45), "TranslateY": (0.0, 0.45),
    "Color": (0.1, 1.9), "Contrast": (0.1, 1.9), "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9),
    "Posterize": (4.0, 8.0), "Solarize": (0.0, 256.0), "SolarizeAdd": (0.0, 110.0),
}


# --- seeds -------------------------------------------------------------------------------------

def split_seed(seed, n: int) -> List[tf.Tensor]:
    """``n`` independent [2]-seeds derived from one."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n)
    return [seeds[i] for i in range(n)]


def _uniform(seed, minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform([], seed, minval=minval, maxval=maxval)


def _random_sign(value, seed):
    return tf.where(_uniform(seed) < 0.5, -value, value)


# --- colour ops ----------------------------------------------------------------------------------

def blend(degenerate, image, factor):
    """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped to [0, 255]."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _gray3(image):
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def color(image, factor):
    return blend(_gray3(image), image, factor)


def contrast(image, factor):
    mean = tf.reduce_mean(tf.floor(tf.image.rgb_to_grayscale(image)))
    return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blend with a 3x3 smoothing (PIL's SMOOTH kernel); border pixels keep their value."""
    kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.round(smooth)
    inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(inner > 0, smooth, image)
    return blend(degenerate, image, factor)


def posterize(image, bits):
    """Keep the top ``bits`` bits of each 8-bit value."""
    step = tf.pow(2.0, 8.0 - tf.cast(bits, tf.float32))
    return tf.floor(image / step) * step


def solarize(image, threshold):
    return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image, addition, threshold=128.0):
    return tf.where(image < threshold, tf.clip_by_value(image + addition, 0.0, 255.0), image)


def invert(image):
    return 255.0 - image


def autocontrast(image):
    """Stretch each channel to [0, 255] (channels with a single value are kept)."""
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1e-6)
    out = tf.clip_by_value(tf.round((image - lo) * scale), 0.0, 255.0)
    return tf.where(hi > lo, out, image)


def _equalize_channel(channel):
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(hist) - nonzero[-1]) // 255

    def equalized():
        lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        return tf.cast(tf.gather(lut, values), tf.float32)

    return tf.cond(step > 0, equalized, lambda: channel)


def equalize(image):
    """Histogram equalisation per channel (PIL ImageOps.equalize)."""
    return tf.stack([_equalize_channel(image[:, :, c]) for c in range(3)], axis=-1)


# --- geometric ops -------------------------------------------------------------------------------

def transform(image, matrix):
    """Apply a projective transform (8 numbers mapping output to input pixels), grey fill."""
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(tf.reshape(matrix, [1, 8]), tf.float32),
        output_shape=shape[:2], fill_value=FILL, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def shear_x(image, level):
    return transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level):
    return transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image, pixels):
    return transform(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
    return transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]))


def rotate(image, degrees):
    """Rotate about the image centre."""
    angle = degrees * math.pi / 180.0
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = (shape[1] - 1.0) / 2.0, (shape[0] - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    matrix = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                       sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    return transform(image, matrix)


# --- level -> operation ------------------------------------------------------------------------

def apply_op(name: str, image, level, seed):
    """Apply op ``name`` at ``level`` (0-10, float tensor); ``seed`` decides random signs."""
    if name == "AutoContrast":
        return autocontrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return invert(image)
    if name not in LEVEL_RANGES:
        raise ValueError(f"unknown augmentation op {name!r}; accepted: {', '.join(RANDAUGMENT_OPS)}")
    low, high = LEVEL_RANGES[name]
    frac = tf.cast(level, tf.float32) / MAX_LEVEL
    if name == "Posterize":
        return posterize(image, low + tf.floor(frac * (high - low)))
    value = low + frac * (high - low)
    shape = tf.cast(tf.shape(image), tf.float32)
    if name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
        value = _random_sign(value, seed)
    if name == "Rotate":
        return rotate(image, value)
    if name == "ShearX":
        return shear_x(image, value)
    if name == "ShearY":
        return shear_y(image, value)
    if name == "TranslateX":
        return translate_x(image, value * shape[1])
    if name == "TranslateY":
        return translate_y(image, value * shape[0])
    if name == "Solarize":
        return solarize(image, value)
    if name == "SolarizeAdd":
        return solarize_add(image, value)
    return {"Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness}[name](image, value)


def _maybe(image, prob: float, fn: Callable, seed):
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return tf.cond(_uniform(seed) < prob, lambda: fn(image), lambda: image)


def autoaugment(image, seed, policy: Sequence = IMAGENET_POLICY):
    """One randomly chosen sub-policy of ``policy``, each step applied with its probability."""
    pick_seed, op_seed = split_seed(seed, 2)
    index = tf.random.stateless_uniform([], pick_seed, 0, len(policy), dtype=tf.int32)

    def branch(sub):
        def run():
            out = image
            seeds = split_seed(op_seed, 2 * len(sub))
            for i, (name, prob, level) in enumerate(sub):
                out = _maybe(out, prob, lambda x, n=name, lv=level, s=seeds[2 * i + 1]: apply_op(n, x, lv, s),
                             seeds[2 * i])
            return out
        return run

    out = tf.switch_case(index, [branch(sub) for sub in policy])
    return tf.ensure_shape(out, image.shape)


def randaugment(image, seed, num_layers: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.0,
                prob: float = 0.5, ops: Sequence[str] = RANDAUGMENT_OPS):
    """``num_layers`` ops drawn uniformly, each applied with ``prob`` at magnitude M (+ noise)."""
    out = image
    seeds = split_seed(seed, 4 * num_layers)
    for i in range(num_layers):
        pick, gate, noise, sign = seeds[4 * i: 4 * i + 4]
        index = tf.random.stateless_uniform([], pick, 0, len(ops), dtype=tf.int32)
        level = tf.constant(float(magnitude))
        if magnitude_std > 0:
            level = level + magnitude_std * tf.random.stateless_normal([], noise)
        level = tf.clip_by_value(level, 0.0, MAX_LEVEL)
        current = out
        branches = [lambda n=name: apply_op(n, current, level, sign) for name in ops]
        applied = lambda: tf.switch_case(index, branches)  # noqa: E731
        out = tf.cond(_uniform(gate) < prob, applied, lambda: current) if prob < 1.0 else applied()
        out = tf.ensure_shape(out, image.shape)
    return out


# --- batch mixing ------------------------------------------------------------------------------

def _beta(seed, alpha: float):
    a, b = split_seed(seed, 2)
    x = tf.random.stateless_gamma([], a, alpha=alpha)
    y = tf.random.stateless_gamma([], b, alpha=alpha)
    return x / tf.maximum(x + y, 1e-12)


def mixup(images, labels, seed, alpha: float):
    """Mix the batch with itself reversed: lam * x + (1 - lam) * x[::-1] (labels likewise)."""
    lam = _beta(seed, alpha)
    return (lam * images + (1.0 - lam) * tf.reverse(images, [0]),
            lam * labels + (1.0 - lam) * tf.reverse(labels, [0]))


def cutmix(images, labels, seed, alpha: float):
    """Paste a box of the reversed batch; labels mixed by the box's actual area."""
    lam_seed, cy_seed, cx_seed = split_seed(seed, 3)
    lam = _beta(lam_seed, alpha)
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cut = tf.sqrt(1.0 - lam)
    ch, cw = h * cut, w * cut
    cy, cx = _uniform(cy_seed, 0.0, h), _uniform(cx_seed, 0.0, w)
    y0 = tf.cast(tf.clip_by_value(tf.round(cy - ch / 2), 0, h), tf.int32)
    y1 = tf.cast(tf.clip_by_value(tf.round(cy + ch / 2), 0, h), tf.int32)
    x0 = tf.cast(tf.clip_by_value(tf.round(cx - cw / 2), 0, w), tf.int32)
    x1 = tf.cast(tf.clip_by_value(tf.round(cx + cw / 2), 0, w), tf.int32)
    rows = tf.range(shape[1])[:, None]
    cols = tf.range(shape[2])[None, :]
    box = tf.cast((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1), images.dtype)[None, :, :, None]
    mixed = images * (1.0 - box) + tf.reverse(images, [0]) * box
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / (h * w)
    lam_adj = 1.0 - area
    return mixed, lam_adj * labels + (1.0 - lam_adj) * tf.reverse(labels, [0])


def mix_batch(images, labels, seed, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              switch_prob: float = 0.5):
    """Mixup, CutMix, or (both on) one of them per batch, CutMix with ``switch_prob``."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, labels
    choice, op_seed = split_seed(seed, 2)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        return tf.cond(_uniform(choice) < switch_prob,
                       lambda: cutmix(images, labels, op_seed, cutmix_alpha),
                       lambda: mixup(images, labels, op_seed, mixup_alpha))
    if cutmix_alpha > 0:
        return cutmix(images, labels, op_seed, cutmix_alpha)
    return mixup(images, labels, op_seed, mixup_alpha)

