"""torchvision's ``Matcher`` and ``BalancedPositiveNegativeSampler`` as batched, padded TF ops.

Ground truth comes padded to a fixed count with a validity mask; padded rows never match. The
sampler draws with stateless random ops from an explicit seed, so a step's sample is
reproducible (and differs per image of the batch).
"""

from __future__ import annotations

from typing import Tuple

from ran_keras.backend import tf
from ran_keras.tasks.detection.errors import DetectionError

#: the Matcher's labels for predictions with no match
BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(quality, gt_valid=None, high_threshold: float = 0.7, low_threshold: float = 0.3,
          allow_low_quality_matches: bool = False) -> tf.Tensor:
    """Index of the matched ground truth for each prediction, or -1 / -2.

    ``quality`` is (..., G, N), e.g. the IoU of G ground-truth boxes against N anchors;
    ``gt_valid`` (..., G) marks real ground truth. A prediction takes its best ground truth
    (the first on ties) if that quality is >= ``high_threshold``, -2 if it lies in
    [low, high), -1 below ``low_threshold``. With ``allow_low_quality_matches`` (the RPN's
    setting), every prediction that reaches some ground truth's highest quality (ties included)
    keeps its best match whatever the thresholds say, so every ground truth gets an anchor.
    Returns int32 (..., N).
    """
    if low_threshold > high_threshold:
        raise DetectionError(f"matcher thresholds: low ({low_threshold}) must not exceed high ({high_threshold})")
    quality = tf.convert_to_tensor(quality, tf.float32)
    if gt_valid is None:
        gt_valid = tf.ones(tf.shape(quality)[:-1], tf.bool)
    q = tf.where(gt_valid[..., None], quality, -1.0)
    best = tf.reduce_max(q, axis=-2)
    num_gt = tf.shape(q)[-2]
    gt_index = tf.range(num_gt)[:, None]
    all_matches = tf.reduce_min(tf.where(q == best[..., None, :], gt_index, num_gt), axis=-2)
    matches = tf.where(best < low_threshold, BELOW_LOW_THRESHOLD,
                       tf.where(best < high_threshold, BETWEEN_THRESHOLDS, all_matches))
    if allow_low_quality_matches:
        highest_per_gt = tf.reduce_max(q, axis=-1, keepdims=True)
        reaches_highest = tf.reduce_any((q == highest_per_gt) & gt_valid[..., None], axis=-2)
        matches = tf.where(reaches_highest, all_matches, matches)
    return matches


def sample_balanced(labels, batch_size_per_image: int, positive_fraction: float,
                    seed) -> Tuple[tf.Tensor, tf.Tensor]:
    """Pick at most ``batch_size_per_image`` entries per image, ``positive_fraction`` positive.

    ``labels`` (B, N): >= 1 positive, 0 negative, -1 ignored. Takes min(#positives,
    int(batch * fraction)) positives, fills the rest with negatives (as many as exist), each set
    drawn uniformly at random with ``seed`` (shape (2,) ints, for tf.random.stateless_uniform).
    Returns (positive mask, negative mask), bool (B, N).
    """
    if batch_size_per_image < 1:
        raise DetectionError(f"sampler batch size per image: must be at least 1, got {batch_size_per_image}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise DetectionError(f"sampler positive fraction: must lie in [0, 1], got {positive_fraction}")
    labels = tf.convert_to_tensor(labels)
    positive = labels >= 1
    negative = labels == 0
    wanted = int(batch_size_per_image * positive_fraction)
    num_pos = tf.minimum(_count(positive), wanted)
    num_neg = tf.minimum(_count(negative), batch_size_per_image - num_pos)
    pos_seed, neg_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    return (_pick(positive, num_pos, pos_seed), _pick(negative, num_neg, neg_seed))


def sampled_indices(mask, size: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """Gather indices of the true entries of ``mask`` (B, N), in index order, padded to ``size``.

    Returns (indices int32 (B, size) padded with 0, valid bool (B, size)); entries beyond
    ``size`` are dropped.
    """
    mask = tf.convert_to_tensor(mask, tf.bool)
    n = tf.shape(mask)[-1]
    index = tf.range(n)
    order = tf.argsort(tf.where(mask, index, n + index), axis=-1, stable=True)
    order = tf.pad(order, [[0, 0], [0, tf.maximum(size - n, 0)]])[:, :size]
    valid = tf.range(size)[None, :] < tf.minimum(_count(mask), size)[:, None]
    return tf.where(valid, order, 0), valid


def _count(mask) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)


def _pick(candidates, count, seed) -> tf.Tensor:
    """A uniformly random ``count`` (per row) of the candidates: the lowest random keys win."""
    keys = tf.random.stateless_uniform(tf.shape(candidates), seed)
    keys = tf.where(candidates, keys, 2.0)
    rank = tf.argsort(tf.argsort(keys, axis=-1, stable=True), axis=-1, stable=True)
    return candidates & (rank < count[..., None])
