"""Running a trained detector: COCO evaluation over a source, predictions on image files, drawing.

``evaluate`` is the task's evaluation pass without the training loop (``ran detect eval``);
``predict_files`` resizes each image as the detector was trained (``datasets.preprocess``) and
gives boxes in the file's pixels; ``draw`` paints boxes on an image (``ran detect predict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ran_keras.backend import tf
from ran_keras.tasks.detection import datasets as ds
from ran_keras.tasks.detection.coco_eval import METRICS, CocoEvaluator
from ran_keras.tasks.detection.errors import DetectionDataError

#: RGB colours of drawn boxes: detections, ground truth
DETECTION_COLOUR = (255, 40, 40)
TRUTH_COLOUR = (40, 220, 40)


def _step(detector):
    @tf.function(reduce_retracing=True)
    def run(features):
        return detector(features, training=False)
    return run


def evaluate(detector, source: ds.DetectionSource, batch_size: int = 2, max_batches: Optional[int] = None,
             log=None) -> Dict[str, float]:
    """COCO AP/AR (``coco_eval.METRICS``, fractions; -1 where undefined) of ``detector`` on every
    image of ``source`` (or the first ``max_batches`` batches)."""
    config, run, evaluator = detector.config, _step(detector), CocoEvaluator()
    data = ds.detection_pipeline(source, False, batch_size, min_size=config.min_size, max_size=config.max_size)
    if max_batches:
        data = data.take(max_batches)
    for i, batch in enumerate(data):
        det = run({k: batch[k] for k in ("image", "image_size", "original_size")})
        evaluator.update(batch["image_id"], det["boxes"], det["scores"], det["classes"], batch["original_boxes"],
                         batch["classes"], det["valid"], batch["box_valid"], batch["is_crowd"], batch["area"])
        if log is not None:
            log(f"evaluated batch {i + 1}")
    result = evaluator.result()
    return {k: result[k] for k in METRICS}


def load_image(path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file TensorFlow decodes."""
    path = Path(path)
    if not path.is_file():
        raise DetectionDataError(f"image {str(path)!r} does not exist")
    try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    except tf.errors.OpError:
        raise DetectionDataError(f"image {str(path)!r}: TensorFlow cannot decode it (accepted: "
                                 f"{', '.join(ds.TF_IMAGE_SUFFIXES)})") from None
    return image.numpy()


def predict_image(detector, image: np.ndarray, run=None) -> Dict[str, np.ndarray]:
    """Detections on one uint8 image: ``boxes`` (N, 4) xyxy in its pixels, ``scores``, ``classes``."""
    config, run = detector.config, run or _step(detector)
    height, width = image.shape[:2]
    record = {"image": tf.constant(image), "boxes": tf.zeros([0, 4]), "classes": tf.zeros([0], tf.int32),
              "is_crowd": tf.zeros([0], tf.bool), "area": tf.zeros([0]), "image_id": tf.constant(0, tf.int64),
              "original_size": tf.constant([height, width], tf.int32)}
    example = ds.preprocess(record, False, min_size=config.min_size, max_size=config.max_size)
    batch = next(iter(ds.batch(tf.data.Dataset.from_tensors(example), 1)))
    det = run({k: batch[k] for k in ("image", "image_size", "original_size")})
    keep = det["valid"][0].numpy()
    return {"boxes": det["boxes"][0].numpy()[keep], "scores": det["scores"][0].numpy()[keep],
            "classes": det["classes"][0].numpy()[keep]}


def predict_files(detector, paths: Sequence, class_names: Optional[Sequence[str]] = None,
                  min_score: float = 0.0) -> List[Dict]:
    """One JSON-able record per image: its path, size and detections scoring at least ``min_score``."""
    run, out = _step(detector), []
    for path in paths:
        image = load_image(path)
        det = predict_image(detector, image, run)
        keep = det["scores"] >= min_score
        rows = [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": int(c),
                 **({"label": _label(class_names, int(c))} if class_names else {})}
                for b, s, c in zip(det["boxes"][keep], det["scores"][keep], det["classes"][keep])]
        out.append({"image": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
                    "detections": rows})
    return out


def _label(class_names, class_id: int) -> str:
    return class_names[class_id - 1] if 0 < class_id <= len(class_names) else str(class_id)


def draw(image: np.ndarray, boxes, colour=DETECTION_COLOUR, thickness: int = 2) -> np.ndarray:
    """A copy of ``image`` (H, W, 3 uint8) with ``boxes`` (N, 4 xyxy pixels) outlined."""
    out = np.array(image, copy=True)
    height, width = out.shape[:2]
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        x1, x2 = (int(np.clip(round(v), 0, width - 1)) for v in (x1, x2))
        y1, y2 = (int(np.clip(round(v), 0, height - 1)) for v in (y1, y2))
        t = thickness
        out[y1:min(y1 + t, y2 + 1), x1:x2 + 1] = colour
        out[max(y2 - t + 1, y1):y2 + 1, x1:x2 + 1] = colour
        out[y1:y2 + 1, x1:min(x1 + t, x2 + 1)] = colour
        out[y1:y2 + 1, max(x2 - t + 1, x1):x2 + 1] = colour
    return out


def write_png(path, image: np.ndarray) -> Path:
    from ran_keras import fileio
    path = Path(path)
    with fileio.atomic_path(path, suffix=".png") as tmp:
        Path(tmp).write_bytes(tf.io.encode_png(image).numpy())
    return path
