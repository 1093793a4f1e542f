"""Proposal selection and detection post-processing on hand-made cases, eager and in tf.function.

Checked once against real torchvision 0.29.1 (torch 2.14.1, CPU) in a throw-away venv outside the
repository, on random inputs saved to .npz and compared here (torch is not a dependency):
* ``RegionProposalNetwork.filter_proposals`` (14250 anchors of an 800 x 1216 batch, images
  800 x 1200 and 790 x 1216, random logits and deltas, train 2000/2000 and test 1000/1000,
  NMS 0.7): the same proposals (as sets; within 1.2e-4 px) and scores (1.2e-7) in all 6 cases
  without tied logits. Order differs only among equal sigmoid scores; with 30 deliberately
  tied logits one image kept 1712 proposals against torchvision's 1711 (tie-breaking in NMS).
* ``RoIHeads.postprocess_detections`` (2 x 300 proposals, 5 classes, score 0.05, NMS 0.5,
  100 per image): the same 100 detections in the same order, classes equal, boxes within
  6.1e-5 px, scores within 1.2e-7.
"""

import math

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection import postprocess as P
from ran_keras.tasks.detection.errors import DetectionError

ANCHORS = tf.constant([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [200, 200, 210, 210]], tf.float32)
SIG = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


def test_flatten_rpn_outputs_matches_anchor_order():
    objectness = tf.reshape(tf.range(2 * 3 * 2, dtype=tf.float32), [1, 2, 3, 2])      # H=2, W=3, A=2
    deltas = tf.reshape(tf.range(2 * 3 * 8, dtype=tf.float32), [1, 2, 3, 8])
    flat_obj, flat_deltas = P.flatten_rpn_outputs(objectness, deltas)
    # entry (h, w, a) -> (h * W + w) * A + a; anchor a's deltas are channels 4a .. 4a + 3
    assert float(flat_obj[0, (1 * 3 + 2) * 2 + 1]) == float(objectness[0, 1, 2, 1])
    np.testing.assert_array_equal(flat_deltas[0, (1 * 3 + 2) * 2 + 1].numpy(), deltas[0, 1, 2, 4:8].numpy())


def test_select_proposals_hand_case():
    logits = tf.constant([[1.0, 2.0, 0.0, 3.0], [1.0, 2.0, 0.0, 3.0]])
    out = P.select_proposals(ANCHORS, logits, tf.zeros([2, 4, 4]), [[100, 100], [15, 15]],
                             pre_nms_top_n=4, post_nms_top_n=3)
    # image 0: anchor 3 is clipped to an empty box (dropped), anchor 1 beats anchor 0 (IoU 0.81 > 0.7),
    # anchor 2 stays; image 1 (15 x 15) also loses anchor 2 to clipping
    assert out["valid"].numpy().tolist() == [[True, True, False], [True, False, False]]
    np.testing.assert_array_equal(out["boxes"][0, :2].numpy(), [[1, 1, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(out["scores"][0].numpy(), [SIG(2), 0.5, 0], rtol=1e-6)
    np.testing.assert_array_equal(out["boxes"][1, 0].numpy(), [1, 1, 10, 10])
    top2 = P.select_proposals(ANCHORS, logits[:1], tf.zeros([1, 4, 4]), [[100, 100]], pre_nms_top_n=2,
                              post_nms_top_n=3)
    assert top2["valid"].numpy().tolist() == [[True, False, False]]       # only anchors 3 and 1 were ranked


def test_select_proposals_decodes_deltas():
    deltas = np.zeros((1, 4, 4), np.float32)
    deltas[0, 2] = [0.1, 0.0, math.log(2.0), 0.0]                         # anchor 2 moved 1 px, twice as wide
    out = P.select_proposals(ANCHORS[2:3], tf.constant([[0.0]]), deltas[:, 2:3], [[100, 100]], 1, 1)
    np.testing.assert_allclose(out["boxes"][0, 0].numpy(), [16, 20, 36, 30], rtol=1e-6)


def _detect_inputs():
    proposals = tf.constant([[[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]]], tf.float32)
    logits = tf.math.log(tf.constant([[[1.0, 8.0, 1.0], [1.0, 6.0, 3.0], [1.0, 1.0, 1.0]]]))
    return proposals, logits, tf.zeros([1, 3, 12])


def test_detect_per_class_nms_and_padding():
    proposals, logits, regression = _detect_inputs()
    valid = tf.constant([[True, True, False]])
    out = P.detect(logits, regression, proposals, valid, [[100, 200]], detections_per_image=3)
    # softmax rows: (.1, .8, .1) and (.1, .6, .3). Class 1: RoI 0 (.8) suppresses RoI 1 (.6, IoU .9);
    # class 2: RoI 1 (.3) suppresses RoI 0 (.1); RoI 2 is padding
    assert out["num_detections"].numpy().tolist() == [2]
    np.testing.assert_allclose(out["scores"][0].numpy(), [0.8, 0.3, 0.0], rtol=1e-6)
    assert out["classes"][0].numpy().tolist() == [1, 2, 0]
    np.testing.assert_allclose(out["boxes"][0].numpy(), [[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 0, 0]])


def test_detect_score_threshold_and_original_coordinates():
    proposals, logits, regression = _detect_inputs()
    valid = tf.constant([[True, True, True]])
    out = P.detect(logits, regression, proposals, valid, [[100, 200]], original_sizes=[[50, 400]],
                   score_threshold=0.35, detections_per_image=5)
    # left: .8 (RoI 0, class 1) and 1/3 + 1/3 for RoI 2's two classes fall below .35 -> only one detection
    assert out["num_detections"].numpy().tolist() == [1]
    np.testing.assert_allclose(out["boxes"][0, 0].numpy(), [0, 0, 20, 5])   # x * 400/200, y * 50/100


def test_compiled_with_unknown_batch():
    sig = [tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, None, 12]), tf.TensorSpec([None, None, 4]),
           tf.TensorSpec([None, None], tf.bool), tf.TensorSpec([None, 2], tf.int32)]
    fn = tf.function(lambda *a: P.detect(*a, detections_per_image=4), input_signature=sig)
    proposals, logits, regression = _detect_inputs()
    out = fn(logits, regression, proposals, tf.constant([[True, True, False]]), tf.constant([[100, 200]]))
    assert out["boxes"].shape == (1, 4, 4) and out["num_detections"].numpy().tolist() == [2]
    rpn = tf.function(lambda o, d, s: P.select_proposals(ANCHORS, o, d, s, 4, 2),
                      input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, 4, 4]),
                                       tf.TensorSpec([None, 2], tf.int32)])
    assert rpn(tf.zeros([3, 4]), tf.zeros([3, 4, 4]), tf.constant([[100, 100]] * 3))["boxes"].shape == (3, 2, 4)


def test_bad_sizes_are_refused():
    with pytest.raises(DetectionError, match="post_nms_top_n"):
        P.select_proposals(ANCHORS, tf.zeros([1, 4]), tf.zeros([1, 4, 4]), [[10, 10]], 4, 0)
