"""RoIAlign as torchvision's ``roi_align`` computes it (its CPU kernel), on NHWC features.

For each RoI and each output bin, ``sampling_ratio`` x ``sampling_ratio`` points on a regular
grid inside the bin are sampled bilinearly and averaged. With ``aligned=False`` (torchvision's
default, used by MultiScaleRoIAlign and so by the detector) box corners are scaled by
``spatial_scale`` with no half-pixel shift and a RoI is at least 1 x 1 feature cells. A sample
point with y < -1 or y > H (likewise x) contributes 0; otherwise coordinates below 0 are moved
to 0 and those at or past the last row/column use that row/column alone.

Bilinear weights separate into a y part and an x part, so each sample is four gathers from
the flattened feature map; gradients flow to the features, not to the boxes (as in
torchvision).
"""

from __future__ import annotations

from typing import Tuple, Union

from ran_keras.backend import tf
from ran_keras.tasks.detection.errors import DetectionError


def roi_align(features, rois, batch_indices, output_size: Union[int, Tuple[int, int]] = 7,
              spatial_scale: float = 1.0 / 32, sampling_ratio: int = 2, aligned: bool = False) -> tf.Tensor:
    """Pool ``features`` (B, H, W, C) over ``rois`` (K, 4) xyxy in image pixels, RoI k from image
    ``batch_indices[k]``; returns (K, out_h, out_w, C) in the features' dtype."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if out_h < 1 or out_w < 1:
        raise DetectionError(f"RoIAlign output size: must be positive, got {output_size}")
    if int(sampling_ratio) < 1:
        raise DetectionError(f"RoIAlign sampling ratio: must be a positive int (the detector uses 2), got "
                             f"{sampling_ratio}; torchvision's adaptive ratio (<= 0) varies per RoI and is not "
                             f"supported")
    features = tf.convert_to_tensor(features)
    rois = tf.stop_gradient(tf.cast(rois, tf.float32))
    shape = tf.shape(features)
    height, width, channels = shape[1], shape[2], shape[3]
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 0] * spatial_scale - offset
    y1 = rois[:, 1] * spatial_scale - offset
    roi_w = rois[:, 2] * spatial_scale - offset - x1
    roi_h = rois[:, 3] * spatial_scale - offset - y1
    if not aligned:
        roi_w = tf.maximum(roi_w, 1.0)
        roi_h = tf.maximum(roi_h, 1.0)
    ys = _sample_points(y1, roi_h / out_h, out_h, sampling_ratio)
    xs = _sample_points(x1, roi_w / out_w, out_w, sampling_ratio)
    y_lo, y_hi, wy_lo, wy_hi = _axis_weights(ys, height)
    x_lo, x_hi, wx_lo, wx_hi = _axis_weights(xs, width)

    flat = tf.reshape(features, [-1, channels])
    base = tf.cast(batch_indices, tf.int32)[:, None, None] * height
    total = 0.0
    for iy in range(sampling_ratio):
        rows = [(base + y[:, :, iy, None]) * width for y in (y_lo, y_hi)]
        row_w = [w[:, :, iy, None] for w in (wy_lo, wy_hi)]
        for ix in range(sampling_ratio):
            cols = [x[:, None, :, ix] for x in (x_lo, x_hi)]
            col_w = [w[:, None, :, ix] for w in (wx_lo, wx_hi)]
            for r, rw in zip(rows, row_w):
                for c, cw in zip(cols, col_w):
                    weight = tf.cast(rw * cw, features.dtype)[..., None]
                    total += weight * tf.gather(flat, r + c)
    return total / tf.cast(sampling_ratio * sampling_ratio, features.dtype)


def _sample_points(start, bin_size, bins: int, grid: int) -> tf.Tensor:
    """(K, bins, grid) coordinates: start + b * bin + (i + 0.5) * bin / grid, in the kernel's order."""
    b = tf.range(bins, dtype=tf.float32)[None, :, None]
    i = tf.range(grid, dtype=tf.float32)[None, None, :] + 0.5
    start, bin_size = start[:, None, None], bin_size[:, None, None]
    return start + b * bin_size + i * bin_size / float(grid)


def _axis_weights(coord, size):
    """Low/high indices and their weights along one axis, zero weight outside [-1, size]."""
    size_f = tf.cast(size, tf.float32)
    inside = (coord >= -1.0) & (coord <= size_f)
    c = tf.where(inside, tf.maximum(coord, 0.0), 0.0)
    low = tf.cast(c, tf.int32)
    edge = low >= size - 1
    low = tf.where(edge, size - 1, low)
    high = tf.where(edge, size - 1, low + 1)
    c = tf.where(edge, tf.cast(low, tf.float32), c)
    frac = c - tf.cast(low, tf.float32)
    keep = tf.cast(inside, tf.float32)
    return low, high, (1.0 - frac) * keep, frac * keep
