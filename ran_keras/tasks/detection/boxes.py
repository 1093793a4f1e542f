"""Box operations with torchvision's semantics: IoU, the box coder, clipping, size filter, NMS.

Boxes are xyxy floats in pixels. Image sizes are (height, width) and broadcast against
``boxes[..., :2]``: for boxes of shape (B, N, 4) pass sizes of shape (B, 1, 2).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from ran_keras.backend import tf
from ran_keras.tasks.detection.errors import DetectionError

#: torchvision's BoxCoder default: the largest log-scale change a decoded box may take
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
#: box-coder weights (wx, wy, ww, wh) of the RPN and of the RoI head (torchvision's defaults)
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def box_area(boxes) -> tf.Tensor:
    """(x2 - x1) * (y2 - y1) over the last axis."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2) -> tf.Tensor:
    """IoU matrix (..., N, M) of boxes1 (..., N, 4) against boxes2 (..., M, 4).

    Pairs whose union is not positive (two empty boxes) get 0 where torchvision would get NaN.
    """
    area1 = box_area(boxes1)[..., :, None]
    area2 = box_area(boxes2)[..., None, :]
    lt = tf.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = tf.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = tf.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    return tf.math.divide_no_nan(inter, tf.where(union > 0, union, tf.zeros_like(union)))


def encode(gt_boxes, anchors, weights: Sequence[float] = RPN_BOX_WEIGHTS) -> tf.Tensor:
    """Regression targets (dx, dy, dw, dh) that move ``anchors`` onto ``gt_boxes`` (same shapes)."""
    wx, wy, ww, wh = _weights(weights)
    ex_w = anchors[..., 2] - anchors[..., 0]
    ex_h = anchors[..., 3] - anchors[..., 1]
    ex_cx = anchors[..., 0] + 0.5 * ex_w
    ex_cy = anchors[..., 1] + 0.5 * ex_h
    gt_w = gt_boxes[..., 2] - gt_boxes[..., 0]
    gt_h = gt_boxes[..., 3] - gt_boxes[..., 1]
    gt_cx = gt_boxes[..., 0] + 0.5 * gt_w
    gt_cy = gt_boxes[..., 1] + 0.5 * gt_h
    return tf.stack([wx * (gt_cx - ex_cx) / ex_w,
                     wy * (gt_cy - ex_cy) / ex_h,
                     ww * tf.math.log(gt_w / ex_w),
                     wh * tf.math.log(gt_h / ex_h)], axis=-1)


def decode(deltas, anchors, weights: Sequence[float] = RPN_BOX_WEIGHTS,
           clip: float = BBOX_XFORM_CLIP) -> tf.Tensor:
    """Boxes from ``deltas`` (..., 4) applied to ``anchors`` (broadcastable); dw, dh capped at ``clip``."""
    wx, wy, ww, wh = _weights(weights)
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = tf.minimum(deltas[..., 2] / ww, clip)
    dh = tf.minimum(deltas[..., 3] / wh, clip)
    pred_cx = dx * widths + ctr_x
    pred_cy = dy * heights + ctr_y
    pred_w = tf.exp(dw) * widths
    pred_h = tf.exp(dh) * heights
    return tf.stack([pred_cx - 0.5 * pred_w, pred_cy - 0.5 * pred_h,
                     pred_cx + 0.5 * pred_w, pred_cy + 0.5 * pred_h], axis=-1)


def clip_to_image(boxes, image_size) -> tf.Tensor:
    """Clamp x to [0, width] and y to [0, height]; ``image_size`` (..., 2) is (height, width)."""
    size = tf.cast(image_size, boxes.dtype)
    h, w = size[..., 0:1], size[..., 1:2]
    x = tf.clip_by_value(tf.stack([boxes[..., 0], boxes[..., 2]], -1), 0.0, w)
    y = tf.clip_by_value(tf.stack([boxes[..., 1], boxes[..., 3]], -1), 0.0, h)
    return tf.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def min_size_mask(boxes, min_size: float) -> tf.Tensor:
    """True where both sides are at least ``min_size`` (torchvision's remove_small_boxes keeps these)."""
    return (boxes[..., 2] - boxes[..., 0] >= min_size) & (boxes[..., 3] - boxes[..., 1] >= min_size)


def resize_boxes(boxes, from_size, to_size) -> tf.Tensor:
    """Scale boxes from an image of ``from_size`` to one of ``to_size`` (each (..., 2) = (h, w)),
    x by the width ratio and y by the height ratio, like torchvision's resize_boxes."""
    ratio = tf.cast(to_size, tf.float32) / tf.cast(from_size, tf.float32)
    ratio = tf.cast(ratio, boxes.dtype)
    rh, rw = ratio[..., 0], ratio[..., 1]
    return tf.stack([boxes[..., 0] * rw, boxes[..., 1] * rh, boxes[..., 2] * rw, boxes[..., 3] * rh], -1)


def xyxy_to_xywh(boxes) -> tf.Tensor:
    """(x1, y1, x2, y2) -> (x, y, width, height), COCO's box format."""
    return tf.concat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xywh_to_xyxy(boxes) -> tf.Tensor:
    """(x, y, width, height) -> (x1, y1, x2, y2)."""
    return tf.concat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def batched_nms(boxes, scores, iou_threshold: float, max_output_size: int, classes=None,
                valid=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS on one image's boxes (N, 4), independently per class, like torchvision's batched_nms.

    Boxes of different classes are moved apart by ``class * (max coordinate + 1)`` (torchvision's
    coordinate trick) so one NMS never compares them; a box is dropped when its IoU with a kept,
    higher-scoring box is above ``iou_threshold``. Only entries where ``valid`` is true take part.
    Returns (indices, kept): ``max_output_size`` indices into the N boxes in decreasing score
    order, padded with 0, and a mask of the real ones.
    """
    if iou_threshold < 0 or iou_threshold > 1:
        raise DetectionError(f"NMS IoU threshold: must lie in [0, 1], got {iou_threshold}")
    if valid is None:
        valid = tf.ones(tf.shape(scores), tf.bool)
    valid = tf.cast(valid, tf.bool)
    if classes is not None:
        max_coordinate = tf.reduce_max(tf.concat([tf.reshape(tf.where(valid[:, None], boxes, 0.0), [-1]), [0.0]], 0))
        boxes = boxes + tf.cast(classes, boxes.dtype)[:, None] * (max_coordinate + 1.0)
    # invalid entries rank below every real score and are cut by the threshold; indices stay those of
    # ``boxes``, with no gather of a candidate list (TFLite's WHILE/GATHER fails on an empty one)
    scores = tf.cast(scores, tf.float32)
    scale = tf.maximum(tf.reduce_max(tf.concat([tf.abs(scores), [1.0]], 0)), 1.0)
    ranked = tf.where(valid, scores, -2.0 * scale)
    indices, count = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes, scores=ranked, max_output_size=max_output_size, iou_threshold=float(iou_threshold),
        score_threshold=-1.5 * scale, pad_to_max_output_size=True)
    count = tf.minimum(count, tf.reduce_sum(tf.cast(valid, tf.int32)))
    kept = tf.range(max_output_size) < count
    return tf.where(kept, indices, 0), kept


def _weights(weights: Optional[Sequence[float]]) -> Tuple[float, float, float, float]:
    if weights is None or len(weights) != 4 or any(float(w) <= 0 for w in weights):
        raise DetectionError(f"box coder weights: need four positive numbers (wx, wy, ww, wh), got {weights}")
    return tuple(float(w) for w in weights)
