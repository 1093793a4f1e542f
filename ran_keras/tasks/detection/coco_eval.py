"""COCO box AP on the host: accumulate a pass's detections and ground truth, score with pycocotools.

Boxes are xyxy in original image pixels (``postprocess.detect(..., original_sizes=...)`` and the
datasets' ``boxes`` are). Crowd ground truth is passed with ``iscrowd=1``, so COCOeval ignores
detections that fall on it rather than counting them as false positives. pycocotools prints
as it works; that output is captured and kept in ``summary`` instead.
"""

from __future__ import annotations

import contextlib
import io
from typing import Dict, List

import numpy as np

from ran_keras.tasks.detection.errors import DetectionError

#: COCOeval.stats in order
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class CocoEvaluator:
    """Collects batches with ``update``, scores them with ``result``, starts over with ``reset``.

    Class ids are used as COCO category ids as they come (1..K here; 0 is background and never
    a detection). Every image passed to ``update`` counts, with or without boxes.
    """

    def __init__(self):
        self.summary = ""
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._images: List[int] = []
        self._seen = set()
        self._gt: List[dict] = []
        self._dt: List[dict] = []

    def update(self, image_ids, detection_boxes, detection_scores, detection_classes, groundtruth_boxes,
               groundtruth_classes, detection_valid=None, groundtruth_valid=None, groundtruth_is_crowd=None,
               groundtruth_area=None) -> None:
        """Add a batch: image ids (B,), detections (B, D, 4) / (B, D) / (B, D) with an optional
        (B, D) validity mask, ground truth (B, G, 4) / (B, G) with optional (B, G) validity, crowd
        flags and areas (COCO's annotation area, e.g. the segment's; default box area). Numpy
        arrays or eager tensors."""
        ids = np.asarray(image_ids).reshape(-1).astype(np.int64)
        dt_boxes, dt_scores, dt_classes = (np.asarray(v) for v in (detection_boxes, detection_scores,
                                                                    detection_classes))
        gt_boxes, gt_classes = np.asarray(groundtruth_boxes), np.asarray(groundtruth_classes)
        dt_valid = _mask(detection_valid, dt_scores.shape)
        gt_valid = _mask(groundtruth_valid, gt_classes.shape)
        crowd = np.zeros(gt_classes.shape, bool) if groundtruth_is_crowd is None else np.asarray(groundtruth_is_crowd)
        area = None if groundtruth_area is None else np.asarray(groundtruth_area, np.float64)
        for b, image_id in enumerate(ids.tolist()):
            if image_id in self._seen:
                raise DetectionError(f"CocoEvaluator.update: image id {image_id} was already added since the last "
                                     f"reset(); every image of an evaluation pass needs its own id")
            self._seen.add(image_id)
            self._images.append(image_id)
            for g in np.flatnonzero(gt_valid[b]):
                xywh = _xywh(gt_boxes[b, g])
                self._gt.append({"id": len(self._gt) + 1, "image_id": image_id, "bbox": xywh,
                                 "category_id": int(gt_classes[b, g]), "iscrowd": int(bool(crowd[b, g])),
                                 "area": float(area[b, g]) if area is not None else xywh[2] * xywh[3]})
            for d in np.flatnonzero(dt_valid[b]):
                xywh = _xywh(dt_boxes[b, d])
                self._dt.append({"id": len(self._dt) + 1, "image_id": image_id, "bbox": xywh,
                                 "category_id": int(dt_classes[b, d]), "score": float(dt_scores[b, d]),
                                 "iscrowd": 0, "area": xywh[2] * xywh[3]})

    def result(self) -> Dict[str, float]:
        """COCO AP / AR (``METRICS``) over everything added since ``reset``; -1 where COCO has no
        ground truth to score (e.g. APs without small objects). Also sets ``summary``."""
        if not self._images:
            raise DetectionError("CocoEvaluator.result: no images were added; call update() with an "
                                 "evaluation pass's batches first")
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        if not self._gt:
            return {name: -1.0 for name in METRICS}
        categories = sorted({a["category_id"] for a in self._gt} | {a["category_id"] for a in self._dt})
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            gt, dt = COCO(), COCO()
            for coco, annotations in ((gt, self._gt), (dt, self._dt)):
                coco.dataset = {"images": [{"id": i} for i in self._images], "annotations": annotations,
                                "categories": [{"id": c} for c in categories]}
                coco.createIndex()
            evaluator = COCOeval(gt, dt, iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        self.summary = captured.getvalue()
        return {name: float(v) for name, v in zip(METRICS, evaluator.stats)}


def _mask(valid, shape) -> np.ndarray:
    return np.ones(shape, bool) if valid is None else np.asarray(valid, bool)


def _xywh(box) -> List[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]
