"""The detector's four losses, reduced over the whole batch as torchvision reduces them.

torchvision concatenates the sampled entries of all images before reducing, so every mean and
every normaliser below is over the batch's sampled entries, not per image. With nothing
sampled at all, a loss is 0 (torchvision would give NaN).
"""

from __future__ import annotations

from typing import Tuple

from ran_keras.backend import tf

#: the smooth-L1 transition point torchvision's detection losses use
SMOOTH_L1_BETA = 1.0 / 9


def smooth_l1(pred, target, beta: float = SMOOTH_L1_BETA) -> tf.Tensor:
    """Elementwise 0.5 x^2 / beta where |x| < beta, else |x| - beta / 2 (x = pred - target)."""
    x = tf.abs(pred - target)
    return tf.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)


def rpn_losses(objectness, box_deltas, labels, regression_targets, sampled_positive,
               sampled_negative) -> Tuple[tf.Tensor, tf.Tensor]:
    """(objectness loss, box loss) of the RPN.

    ``objectness`` (B, N) logits, ``box_deltas`` (B, N, 4), ``labels`` (B, N) (1 / 0),
    ``regression_targets`` (B, N, 4), sampled masks (B, N). Objectness: binary cross-entropy with
    logits, mean over the sampled anchors. Box: smooth L1 (beta 1/9) summed over the sampled
    positives, divided by the number of sampled anchors.
    """
    sampled = tf.cast(sampled_positive, tf.bool) | tf.cast(sampled_negative, tf.bool)
    count = tf.reduce_sum(tf.cast(sampled, tf.float32))
    logits = tf.cast(objectness, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.where(sampled, tf.cast(labels, tf.float32), 0.0),
                                                  logits=logits)
    objectness_loss = tf.math.divide_no_nan(tf.reduce_sum(tf.where(sampled, bce, 0.0)), count)
    box_loss = tf.math.divide_no_nan(_masked_l1(box_deltas, regression_targets, sampled_positive), count)
    return objectness_loss, box_loss


def roi_head_losses(class_logits, box_regression, labels, regression_targets, valid) -> Tuple[tf.Tensor, tf.Tensor]:
    """(classification loss, box loss) of the RoI head (torchvision's fastrcnn_loss).

    ``class_logits`` (B, S, K) with K including background 0, ``box_regression`` (B, S, 4 K),
    ``labels`` (B, S) int, ``regression_targets`` (B, S, 4), ``valid`` (B, S) the sampled RoIs.
    Classification: softmax cross-entropy, mean over the sampled RoIs. Box: smooth L1 (beta 1/9)
    on each positive RoI's deltas for its own class, summed, divided by the number of sampled RoIs.
    """
    valid = tf.cast(valid, tf.bool)
    labels = tf.where(valid, tf.cast(labels, tf.int32), 0)
    count = tf.reduce_sum(tf.cast(valid, tf.float32))
    logits = tf.cast(class_logits, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    classification_loss = tf.math.divide_no_nan(tf.reduce_sum(tf.where(valid, ce, 0.0)), count)
    num_classes = tf.shape(logits)[-1]
    per_class = tf.reshape(box_regression, tf.concat([tf.shape(labels), [num_classes, 4]], 0))
    own = tf.gather(per_class, labels, batch_dims=2)
    box_loss = tf.math.divide_no_nan(_masked_l1(own, regression_targets, valid & (labels > 0)), count)
    return classification_loss, box_loss


def _masked_l1(pred, target, mask) -> tf.Tensor:
    """Sum of smooth L1 over the masked rows; masked-out targets are zeroed first so a non-finite
    value there cannot leak NaN into the gradient."""
    mask = tf.cast(mask, tf.bool)[..., None]
    pred = tf.cast(pred, tf.float32)
    target = tf.where(mask, tf.cast(target, tf.float32), 0.0)
    return tf.reduce_sum(tf.where(mask, smooth_l1(pred, target), 0.0))
