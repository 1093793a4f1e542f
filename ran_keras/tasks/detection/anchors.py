"""Anchors for one feature map, as torchvision's ``AnchorGenerator`` makes them.

Each position gets ``len(aspect_ratios) * len(sizes)`` anchors, ratio-major (for each aspect
ratio, every size), with aspect ratio = height / width. The zero-centred base anchors are
rounded half-to-even (``torch.round``), and position (i, j) shifts them by
(j * stride_w, i * stride_h): the top-left corner of the cell, no half-pixel offset. The stride
is the padded image size integer-divided by the feature map size. Anchors are ordered position
by position (row-major), then base anchor, which is the order of an NHWC head output reshaped
to (N, H * W * A).
"""

from __future__ import annotations

from typing import Sequence

from ran_keras.backend import tf
from ran_keras.tasks.detection.config import DEFAULT_ASPECT_RATIOS, DEFAULT_SIZES
from ran_keras.tasks.detection.errors import DetectionError


def num_anchors_per_location(sizes: Sequence[float] = DEFAULT_SIZES,
                             aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS) -> int:
    """A = sizes x aspect ratios: the channels of the RPN's objectness conv (4 A for its box conv)."""
    _check(sizes, aspect_ratios)
    return len(sizes) * len(aspect_ratios)


def base_anchors(sizes: Sequence[float] = DEFAULT_SIZES,
                 aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS) -> tf.Tensor:
    """(A, 4) zero-centred xyxy anchors, rounded half-to-even, ratio-major like torchvision."""
    _check(sizes, aspect_ratios)
    scales = tf.constant(sizes, tf.float32)
    h_ratios = tf.sqrt(tf.constant(aspect_ratios, tf.float32))
    w_ratios = 1.0 / h_ratios
    ws = tf.reshape(w_ratios[:, None] * scales[None, :], [-1])
    hs = tf.reshape(h_ratios[:, None] * scales[None, :], [-1])
    return tf.round(tf.stack([-ws, -hs, ws, hs], axis=1) / 2.0)


def grid_anchors(image_size, feature_size, sizes: Sequence[float] = DEFAULT_SIZES,
                 aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS) -> tf.Tensor:
    """(H * W * A, 4) xyxy anchors for a feature map of ``feature_size`` (H, W) computed from a
    padded image batch of ``image_size`` (height, width); ints or int tensors."""
    image_size = tf.cast(image_size, tf.int32)
    feature_size = tf.cast(feature_size, tf.int32)
    stride = tf.cast(image_size // feature_size, tf.float32)
    shifts_y = tf.range(feature_size[0], dtype=tf.float32) * stride[0]
    shifts_x = tf.range(feature_size[1], dtype=tf.float32) * stride[1]
    shift_y, shift_x = tf.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x = tf.reshape(shift_x, [-1])
    shift_y = tf.reshape(shift_y, [-1])
    shifts = tf.stack([shift_x, shift_y, shift_x, shift_y], axis=1)
    cell = base_anchors(sizes, aspect_ratios)
    return tf.reshape(shifts[:, None, :] + cell[None, :, :], [-1, 4])


def _check(sizes, aspect_ratios) -> None:
    if len(sizes) == 0 or any(float(s) <= 0 for s in sizes):
        raise DetectionError(f"anchor sizes: need one or more positive sizes in pixels, got {tuple(sizes)}")
    if len(aspect_ratios) == 0 or any(float(r) <= 0 for r in aspect_ratios):
        raise DetectionError(f"anchor aspect ratios: need one or more positive height/width ratios, "
                             f"got {tuple(aspect_ratios)}")
