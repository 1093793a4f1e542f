"""Training targets of the two stages, composed from matching, sampling and the box coder.

``rpn_targets`` is torchvision's RegionProposalNetwork.assign_targets_to_anchors (+ encode);
``roi_training_samples`` is RoIHeads.select_training_samples (add the ground truth to the
proposals, match, sample, encode). Ground truth is padded per image with a validity mask;
crowd boxes must be marked invalid here (torchvision's references drop them from training).
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from ran_keras.backend import tf
from ran_keras.tasks.detection import boxes as box_ops
from ran_keras.tasks.detection.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match, \
    sample_balanced, sampled_indices


def rpn_targets(anchors, gt_boxes, gt_valid, fg_iou_threshold: float = 0.7, bg_iou_threshold: float = 0.3,
                weights: Sequence[float] = box_ops.RPN_BOX_WEIGHTS) -> Tuple[tf.Tensor, tf.Tensor]:
    """Objectness labels (B, N) float32 (1 object, 0 background, -1 ignored) and box regression
    targets (B, N, 4) for ``anchors`` (N, 4) given ground truth (B, G, 4) / (B, G).

    Matching allows low-quality matches (each ground truth gets its best anchors). Targets are 0
    where the label is not 1; an image without ground truth is all background.
    """
    gt_boxes, gt_valid = _at_least_one_row(gt_boxes, gt_valid)
    iou = box_ops.box_iou(gt_boxes, anchors[None])
    matched = match(iou, gt_valid, fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=True)
    labels = tf.where(matched >= 0, 1.0, tf.where(matched == BELOW_LOW_THRESHOLD, 0.0, -1.0))
    matched_boxes = tf.gather(gt_boxes, tf.maximum(matched, 0), batch_dims=1)
    positive = (labels > 0)[..., None]
    return labels, box_ops.encode(tf.where(positive, matched_boxes, anchors), anchors, weights)


def roi_training_samples(proposals, proposal_valid, gt_boxes, gt_classes, gt_valid, seed,
                         batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                         fg_iou_threshold: float = 0.5, bg_iou_threshold: float = 0.5,
                         weights: Sequence[float] = box_ops.ROI_BOX_WEIGHTS,
                         add_gt_proposals: bool = True) -> Dict[str, tf.Tensor]:
    """The RoIs the box head trains on, with their class labels and regression targets.

    ``proposals`` (B, P, 4) with ``proposal_valid`` (B, P); ground truth boxes (B, G, 4), classes
    (B, G) int (1..K) and ``gt_valid`` (B, G). The ground-truth boxes are appended to the
    proposals, each proposal is matched (IoU >= fg: its ground truth's class; < bg: background
    0; in between: ignored; no low-quality matches), then ``batch_size_per_image`` are sampled
    at ``positive_fraction`` positives with ``seed``.
    Returns a dict of (B, S) tensors, S = ``batch_size_per_image``: ``rois`` (B, S, 4),
    ``valid`` (fewer RoIs than S when there are not enough candidates), ``labels`` int32 (0 on
    padding) and ``regression_targets`` (B, S, 4), 0 except for positives.
    """
    proposals = tf.convert_to_tensor(proposals, tf.float32)
    gt_boxes, gt_valid, gt_classes = _at_least_one_row(gt_boxes, gt_valid, gt_classes)
    proposal_valid = tf.convert_to_tensor(proposal_valid, tf.bool)
    if add_gt_proposals:
        proposals = tf.concat([proposals, gt_boxes], axis=1)
        proposal_valid = tf.concat([proposal_valid, gt_valid], axis=1)
    iou = box_ops.box_iou(gt_boxes, proposals)
    matched = match(iou, gt_valid, fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=False)
    clamped = tf.maximum(matched, 0)
    labels = tf.gather(tf.cast(gt_classes, tf.int32), clamped, batch_dims=1)
    labels = tf.where(matched == BELOW_LOW_THRESHOLD, 0, labels)
    labels = tf.where((matched == BETWEEN_THRESHOLDS) | ~proposal_valid, -1, labels)

    positive, negative = sample_balanced(labels, batch_size_per_image, positive_fraction, seed)
    index, valid = sampled_indices(positive | negative, batch_size_per_image)
    rois = tf.gather(proposals, index, batch_dims=1)
    roi_labels = tf.where(valid, tf.gather(labels, index, batch_dims=1), 0)
    matched_boxes = tf.gather(gt_boxes, tf.gather(clamped, index, batch_dims=1), batch_dims=1)
    positive = (roi_labels > 0)[..., None]
    unit = tf.constant([0.0, 0.0, 1.0, 1.0])
    targets = box_ops.encode(tf.where(positive, matched_boxes, unit), tf.where(positive, rois, unit), weights)
    return {"rois": rois, "valid": valid, "labels": roi_labels, "regression_targets": targets}


def _at_least_one_row(gt_boxes, gt_valid, gt_classes=None):
    """Pad the ground truth to at least one (invalid) row, so gathers work when a batch has none."""
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    extra = tf.maximum(1 - tf.shape(gt_valid)[1], 0)
    padded = (tf.pad(gt_boxes, [[0, 0], [0, extra], [0, 0]]), tf.pad(gt_valid, [[0, 0], [0, extra]]))
    if gt_classes is None:
        return padded
    return padded + (tf.pad(tf.cast(gt_classes, tf.int32), [[0, 0], [0, extra]]),)
