"""Matcher, balanced sampler and the two stages' training targets, on hand-made cases.

Checked once against real torchvision 0.29.1 (torch 2.14.1, CPU) in a throw-away venv outside the
repository, on random inputs saved to .npz and compared here (torch is not a dependency):
``Matcher`` (0.7/0.3 and 0.5/0.5, with and without low-quality matches) on the IoU of 6 random
boxes against 300 (10 duplicated, so ties occur) gives exactly ``match``'s indices. The sampler
draws differently from torch's RNG by design (seeded stateless ops); its counts are tested here.
"""

import math

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection import boxes as B
from ran_keras.tasks.detection.errors import DetectionError
from ran_keras.tasks.detection.matching import match, sample_balanced, sampled_indices
from ran_keras.tasks.detection.targets import roi_training_samples, rpn_targets

Q = [[0.9, 0.5, 0.1, 0.2, 0.0],
     [0.1, 0.6, 0.25, 0.29, 0.0]]


def test_thresholds_give_minus_one_and_minus_two():
    got = match(tf.constant(Q), high_threshold=0.7, low_threshold=0.3).numpy()
    assert got.tolist() == [0, -2, -1, -1, -1]
    # the low threshold is inclusive for "between", the high one inclusive for a match
    got = match(tf.constant([[0.7, 0.3, 0.2999]]), high_threshold=0.7, low_threshold=0.3).numpy()
    assert got.tolist() == [0, -2, -1]


def test_low_quality_matches_include_ties():
    got = match(tf.constant(Q), high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    assert got.numpy().tolist() == [0, 1, -1, -1, -1]        # prediction 1 is gt 1's best
    tied = tf.constant([[0.2, 0.4, 0.4, 0.1]])
    got = match(tied, high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    assert got.numpy().tolist() == [-1, 0, 0, -1]


def test_low_quality_quirk_of_a_ground_truth_touching_nothing():
    # gt 1 overlaps nothing: its "highest" quality is 0, reached by every prediction, so (as in
    # torchvision) every prediction takes its best match, even prediction 1 whose best IoU is 0 (gt 0 by tie)
    q = tf.constant([[0.8, 0.0, 0.1], [0.0, 0.0, 0.0]])
    got = match(q, high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    assert got.numpy().tolist() == [0, 0, 0]


def test_padded_ground_truth_never_matches():
    q = tf.constant([[[0.9, 0.1], [1.0, 1.0]]])               # row 1 is padding
    got = match(q, tf.constant([[True, False]]), 0.7, 0.3, allow_low_quality_matches=True)
    assert got.numpy().tolist() == [[0, -1]]
    got = match(q, tf.constant([[False, False]]), 0.7, 0.3, allow_low_quality_matches=True)
    assert got.numpy().tolist() == [[-1, -1]]


def _labels(num_pos, num_neg, num_ignored):
    labels = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignored, np.int32)
    return np.random.default_rng(1).permutation(labels)


def test_sampler_counts_and_reproducibility():
    labels = tf.constant(np.stack([_labels(10, 300, 40), _labels(200, 100, 50)]))
    pos, neg = sample_balanced(labels, 256, 0.5, seed=[3, 4])
    assert pos.numpy().sum(1).tolist() == [10, 128]           # few positives: all; many: int(256 * 0.5)
    assert neg.numpy().sum(1).tolist() == [246, 100]          # the rest negatives, as many as exist
    lab = labels.numpy()
    assert (lab[pos.numpy()] >= 1).all() and (lab[neg.numpy()] == 0).all()
    again = sample_balanced(labels, 256, 0.5, seed=[3, 4])
    assert (again[0].numpy() == pos.numpy()).all() and (again[1].numpy() == neg.numpy()).all()
    other = sample_balanced(labels, 256, 0.5, seed=[3, 5])
    assert (other[0].numpy() != pos.numpy()).any()


def test_sampler_roi_setting_int_of_batch_times_fraction():
    labels = tf.constant(_labels(500, 600, 0)[None])
    pos, neg = sample_balanced(labels, 512, 0.25, seed=[0, 0])
    assert int(pos.numpy().sum()) == 128 and int(neg.numpy().sum()) == 384
    pos, neg = sample_balanced(labels, 5, 0.25, seed=[0, 0])
    assert int(pos.numpy().sum()) == 1 and int(neg.numpy().sum()) == 4      # int(1.25) = 1


def test_sampler_is_uniform():
    labels = tf.constant(np.tile([[1] * 4 + [0] * 4], (400, 1)).astype(np.int32))   # 400 images, own draws
    pos, neg = sample_balanced(labels, 4, 0.5, seed=[0, 0])
    picks = (pos.numpy() | neg.numpy()).mean(axis=0)
    np.testing.assert_allclose(picks, 0.5, atol=0.1)                       # each entry in about half the draws


def test_sampled_indices_order_and_padding():
    index, valid = sampled_indices(tf.constant([[False, True, False, True], [True, False, False, False]]), 3)
    assert index.numpy().tolist() == [[1, 3, 0], [0, 0, 0]]
    assert valid.numpy().tolist() == [[True, True, False], [True, False, False]]
    index, valid = sampled_indices(tf.constant([[True, True]]), 4)    # fewer entries than the size
    assert index.numpy().tolist() == [[0, 1, 0, 0]] and valid.numpy().tolist() == [[True, True, False, False]]


def test_sampler_refuses_bad_settings():
    with pytest.raises(DetectionError, match="positive fraction"):
        sample_balanced(tf.zeros([1, 3], tf.int32), 4, 1.5, [0, 0])
    with pytest.raises(DetectionError, match="thresholds"):
        match(tf.zeros([1, 1]), high_threshold=0.3, low_threshold=0.7)


def test_rpn_targets_hand_case():
    anchors = tf.constant([[0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60], [0, 0, 11, 10]], tf.float32)
    gt = tf.constant([[[0, 0, 10, 10], [0, 0, 0, 0]]], tf.float32)
    labels, targets = rpn_targets(anchors, gt, tf.constant([[True, False]]))
    # IoUs with the gt: 1, 0.5 (between 0.3 and 0.7: ignored), 0 (background), 10/11 (object)
    assert labels.numpy().tolist() == [[1, -1, 0, 1]]
    np.testing.assert_allclose(targets.numpy()[0, 0], 0, atol=1e-7)
    np.testing.assert_allclose(targets.numpy()[0, 3], [-0.5 / 11, 0, math.log(10 / 11), 0], rtol=1e-5)
    np.testing.assert_array_equal(targets.numpy()[0, 1:3], 0)
    labels, _ = rpn_targets(anchors, gt, tf.constant([[False, False]]))   # no ground truth: all background
    assert labels.numpy().tolist() == [[0, 0, 0, 0]]


def test_roi_training_samples_hand_case():
    proposals = tf.constant([[[0, 0, 10, 12], [0, 0, 10, 30], [40, 40, 50, 50], [0, 0, 1, 1]]], tf.float32)
    gt = tf.constant([[[0, 0, 10, 10], [0, 0, 0, 0]]], tf.float32)
    out = roi_training_samples(proposals, tf.constant([[True, True, True, False]]), gt,
                               tf.constant([[7, 0]]), tf.constant([[True, False]]), seed=[1, 2],
                               batch_size_per_image=8, positive_fraction=0.25)
    # candidates: p0 IoU 10/12 (class 7), p1 1/3 (background), p2 0 (background), p3 padding,
    # the appended gt (class 7); int(8 * 0.25) = 2 positives, then the 2 negatives; 4 of 8 slots used
    valid = out["valid"].numpy()[0]
    assert valid.tolist() == [True] * 4 + [False] * 4
    rois = out["rois"].numpy()[0][valid]
    labels = out["labels"].numpy()[0][valid]
    assert sorted(labels.tolist()) == [0, 0, 7, 7]
    targets = out["regression_targets"].numpy()[0][valid]
    for roi, label, target in zip(rois, labels, targets):
        if label == 7 and roi[3] == 12:
            expected = B.encode(gt[0, :1], roi[None], B.ROI_BOX_WEIGHTS).numpy()[0]
            np.testing.assert_allclose(target, expected, rtol=1e-6)
            np.testing.assert_allclose(target, [0, -10 / 12, 0, 5 * math.log(10 / 12)], rtol=1e-5)
        else:
            np.testing.assert_allclose(target, 0, atol=1e-7)
    assert not np.any(np.all(rois == [0, 0, 1, 1], axis=1))          # the padded proposal is never sampled


def test_batches_without_any_ground_truth_row():
    anchors = tf.constant([[0, 0, 10, 10], [5, 5, 20, 20]], tf.float32)
    labels, targets = rpn_targets(anchors, tf.zeros([2, 0, 4]), tf.zeros([2, 0], tf.bool))
    assert labels.numpy().tolist() == [[0, 0], [0, 0]] and not targets.numpy().any()
    out = roi_training_samples(anchors[None], tf.ones([1, 2], tf.bool), tf.zeros([1, 0, 4]),
                               tf.zeros([1, 0], tf.int32), tf.zeros([1, 0], tf.bool), seed=[0, 0],
                               batch_size_per_image=4)
    assert out["valid"].numpy().tolist() == [[True, True, False, False]]
    assert out["labels"].numpy().tolist() == [[0, 0, 0, 0]]
