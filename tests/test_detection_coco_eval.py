"""COCO evaluator on hand-made cases whose AP is known, stdout stays quiet."""

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection.coco_eval import METRICS, CocoEvaluator
from ran_keras.tasks.detection.errors import DetectionError

# two medium objects (areas 50x50 and 40x60 lie between 32^2 and 96^2) in image 1, one large in image 2
GT_BOXES = np.array([[[10, 10, 60, 60], [100, 100, 140, 160]], [[0, 0, 200, 150], [0, 0, 0, 0]]], np.float32)
GT_CLASSES = np.array([[1, 2], [1, 0]])
GT_VALID = np.array([[True, True], [True, False]])


def _evaluate(boxes, scores, classes, valid, crowd=None):
    ev = CocoEvaluator()
    ev.update([1, 2], boxes, scores, classes, GT_BOXES, GT_CLASSES, detection_valid=valid,
              groundtruth_valid=GT_VALID, groundtruth_is_crowd=crowd)
    return ev, ev.result()


def test_perfect_detections_score_one(capsys):
    ev, res = _evaluate(GT_BOXES, np.full((2, 2), 0.9), GT_CLASSES, GT_VALID)
    assert set(res) == set(METRICS)
    for name in ("AP", "AP50", "AP75", "APm", "APl", "AR1", "AR10", "AR100", "ARm", "ARl"):
        assert res[name] == pytest.approx(1.0), name
    assert res["APs"] == -1 and res["ARs"] == -1                  # no small objects to score
    assert capsys.readouterr().out == ""                           # pycocotools' chatter was captured
    assert "Average Precision" in ev.summary


def test_one_missed_box_of_two():
    # class 1 only: one of its two objects found. Precision 1 up to recall 0.5, nothing after:
    # 51 of COCO's 101 recall points -> 51/101 at every IoU threshold
    boxes = np.zeros((2, 1, 4), np.float32)
    boxes[0, 0] = GT_BOXES[0, 0]
    ev = CocoEvaluator()
    ev.update([1, 2], boxes, [[0.9], [0.0]], [[1], [1]], GT_BOXES[:, :1], GT_CLASSES[:, :1],
              detection_valid=[[True], [False]], groundtruth_valid=GT_VALID[:, :1])
    res = ev.result()
    assert res["AP"] == pytest.approx(51 / 101) and res["AP50"] == pytest.approx(51 / 101)
    assert res["AR100"] == pytest.approx(0.5)


def test_false_positive_ranked_first_halves_precision():
    boxes = np.array([[[300, 300, 350, 350], [10, 10, 60, 60]], [[0, 0, 0, 0]] * 2], np.float32)
    ev = CocoEvaluator()
    ev.update([1, 2], boxes, [[0.9, 0.8], [0, 0]], [[1, 1], [1, 1]], GT_BOXES[:, :1], GT_CLASSES[:, :1],
              detection_valid=[[True, True], [False, False]], groundtruth_valid=GT_VALID[:, :1])
    # precision 1/2 at recall 1/2 (interpolated back to recall 0), 0 beyond
    assert ev.result()["AP"] == pytest.approx(51 * 0.5 / 101)


def test_crowd_ground_truth_ignores_detections_on_it():
    crowd = np.array([[False, True], [False, False]])
    boxes = np.array([[[10, 10, 60, 60], [105, 105, 135, 150]], [[0, 0, 200, 150], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[1, 2], [1, 1]])
    valid = np.array([[True, True], [True, False]])
    scores = np.array([[0.8, 0.95], [0.7, 0.0]])
    _, res = _evaluate(tf.constant(boxes), tf.constant(scores), classes, valid, crowd=crowd)
    assert res["AP"] == pytest.approx(1.0)                          # the class-2 box on the crowd is ignored
    _, res = _evaluate(boxes, scores, classes, valid)                 # the same box on a normal object
    assert res["AP"] < 1.0


def test_reset_duplicate_ids_and_empty():
    ev = CocoEvaluator()
    with pytest.raises(DetectionError, match="no images"):
        ev.result()
    ev.update([7], np.zeros((1, 0, 4)), np.zeros((1, 0)), np.zeros((1, 0)), np.zeros((1, 0, 4)), np.zeros((1, 0)))
    assert ev.result()["AP"] == -1                                  # no ground truth at all
    with pytest.raises(DetectionError, match="image id 7 was already added"):
        ev.update([7], np.zeros((1, 0, 4)), np.zeros((1, 0)), np.zeros((1, 0)), np.zeros((1, 0, 4)), np.zeros((1, 0)))
    ev.reset()
    ev.update([7], GT_BOXES[:1], [[0.9, 0.9]], GT_CLASSES[:1], GT_BOXES[:1], GT_CLASSES[:1])
    assert ev.result()["AP"] == pytest.approx(1.0)
