"""Proposal selection (RPN) and detection post-processing (RoI head), torchvision's semantics.

Outputs have a fixed size per image (``post_nms_top_n`` proposals, ``detections_per_image``
detections) with a validity mask, so both run inside ``tf.function`` on padded batches. NMS
runs image by image (``tf.map_fn``) on the candidates that survive the filters.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from ran_keras.backend import tf
from ran_keras.tasks.detection import boxes as box_ops
from ran_keras.tasks.detection.errors import DetectionError

#: torchvision's RegionProposalNetwork.min_size and RoIHeads' small-box cut
RPN_MIN_SIZE = 1e-3
DETECTION_MIN_SIZE = 1e-2


def flatten_rpn_outputs(objectness, box_deltas) -> Tuple[tf.Tensor, tf.Tensor]:
    """RPN head outputs (B, H, W, A) and (B, H, W, 4 A) as (B, H W A) and (B, H W A, 4), in the
    order of ``anchors.grid_anchors`` (torchvision's permute_and_flatten on NCHW gives the same)."""
    batch = tf.shape(objectness)[0]
    return tf.reshape(objectness, [batch, -1]), tf.reshape(box_deltas, [batch, -1, 4])


def select_proposals(anchors, objectness, box_deltas, image_sizes, pre_nms_top_n: int = 1000,
                     post_nms_top_n: int = 1000, nms_threshold: float = 0.7,
                     min_size: float = RPN_MIN_SIZE, score_threshold: float = 0.0) -> Dict[str, tf.Tensor]:
    """The RPN's proposals per image (torchvision's filter_proposals on one feature level).

    Take the ``pre_nms_top_n`` highest objectness logits (B, N), decode their deltas (B, N, 4)
    against ``anchors`` (N, 4), clip to each image's (height, width) in ``image_sizes`` (B, 2),
    drop boxes with a side below ``min_size`` or a sigmoid score below ``score_threshold``, NMS
    at ``nms_threshold``, keep the best ``post_nms_top_n``. No gradient flows back.
    Returns ``boxes`` (B, P, 4), ``scores`` (B, P) sigmoid probabilities, ``valid`` (B, P),
    P = ``post_nms_top_n``, best first.
    """
    _check_positive(pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n)
    objectness = tf.stop_gradient(tf.cast(objectness, tf.float32))
    box_deltas = tf.stop_gradient(tf.cast(box_deltas, tf.float32))
    k = tf.minimum(pre_nms_top_n, tf.shape(objectness)[1])
    top_logits, top_index = tf.math.top_k(objectness, k)
    proposals = box_ops.decode(tf.gather(box_deltas, top_index, batch_dims=1), tf.gather(anchors, top_index),
                               box_ops.RPN_BOX_WEIGHTS)
    proposals = box_ops.clip_to_image(proposals, tf.cast(image_sizes, tf.float32)[:, None, :])
    scores = tf.sigmoid(top_logits)
    keep = box_ops.min_size_mask(proposals, min_size) & (scores >= score_threshold)
    index, valid = _nms_per_image(proposals, scores, keep, None, nms_threshold, post_nms_top_n)
    return {"boxes": tf.gather(proposals, index, batch_dims=1),
            "scores": tf.where(valid, tf.gather(scores, index, batch_dims=1), 0.0),
            "valid": valid}


def detect(class_logits, box_regression, proposals, proposal_valid, image_sizes, original_sizes=None,
           score_threshold: float = 0.05, nms_threshold: float = 0.5, detections_per_image: int = 100,
           min_size: float = DETECTION_MIN_SIZE,
           weights: Sequence[float] = box_ops.ROI_BOX_WEIGHTS) -> Dict[str, tf.Tensor]:
    """Final detections per image (torchvision's RoIHeads.postprocess_detections + transform).

    ``class_logits`` (B, R, K) (class 0 = background), ``box_regression`` (B, R, 4 K),
    ``proposals`` (B, R, 4) with ``proposal_valid`` (B, R), ``image_sizes`` (B, 2) the resized
    (unpadded) (height, width). Every (proposal, foreground class) pair is a candidate: softmax
    score, its class's box decoded and clipped to the image; candidates with score <=
    ``score_threshold`` or a side below ``min_size`` go, then NMS per class at
    ``nms_threshold`` and the best ``detections_per_image`` stay. With ``original_sizes`` (B, 2)
    the boxes are scaled back to the original images (per axis, like torchvision).
    Returns ``boxes`` (B, D, 4), ``scores`` (B, D), ``classes`` int32 (B, D), ``valid`` (B, D)
    and ``num_detections`` (B,), D = ``detections_per_image``, best first.
    """
    _check_positive(detections_per_image=detections_per_image)
    logits = tf.cast(class_logits, tf.float32)
    shape = tf.shape(logits)
    batch, rois, num_classes = shape[0], shape[1], shape[2]
    deltas = tf.reshape(tf.cast(box_regression, tf.float32), [batch, rois, num_classes, 4])
    boxes = box_ops.decode(deltas, tf.cast(proposals, tf.float32)[:, :, None, :], weights)
    sizes = tf.cast(image_sizes, tf.float32)
    boxes = box_ops.clip_to_image(boxes, sizes[:, None, None, :])[:, :, 1:]
    scores = tf.nn.softmax(logits, axis=-1)[:, :, 1:]
    classes = tf.broadcast_to(tf.range(1, num_classes), tf.shape(scores))
    boxes = tf.reshape(boxes, [batch, -1, 4])
    scores = tf.reshape(scores, [batch, -1])
    classes = tf.reshape(classes, [batch, -1])
    proposal_valid = tf.reshape(tf.repeat(tf.cast(proposal_valid, tf.bool), num_classes - 1, axis=1), [batch, -1])
    keep = proposal_valid & (scores > score_threshold) & box_ops.min_size_mask(boxes, min_size)
    index, valid = _nms_per_image(boxes, scores, keep, classes, nms_threshold, detections_per_image)
    out_boxes = tf.gather(boxes, index, batch_dims=1)
    if original_sizes is not None:
        out_boxes = box_ops.resize_boxes(out_boxes, sizes[:, None, :], tf.cast(original_sizes, tf.float32)[:, None, :])
    mask = valid[..., None]
    return {"boxes": tf.where(mask, out_boxes, 0.0),
            "scores": tf.where(valid, tf.gather(scores, index, batch_dims=1), 0.0),
            "classes": tf.where(valid, tf.gather(classes, index, batch_dims=1), 0),
            "valid": valid,
            "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)}


def _nms_per_image(boxes, scores, keep, classes, iou_threshold: float, size: int):
    """batched_nms image by image: (indices (B, size), valid (B, size)); ``classes`` None = one class."""
    if classes is None:
        classes = tf.zeros(tf.shape(scores), tf.int32)
    return tf.map_fn(lambda a: box_ops.batched_nms(a[0], a[1], iou_threshold, size, classes=a[3], valid=a[2]),
                     (boxes, scores, keep, classes),
                     fn_output_signature=(tf.TensorSpec([size], tf.int32), tf.TensorSpec([size], tf.bool)))


def _check_positive(**values) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise DetectionError(f"{name}: must be a positive int, got {value}")
