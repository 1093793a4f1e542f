"""The building blocks composed as the detector will use them, in one tf.function, on a real batch."""

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection import anchors as A, datasets as DS, postprocess as P
from ran_keras.tasks.detection.coco_eval import CocoEvaluator
from ran_keras.tasks.detection.losses import roi_head_losses, rpn_losses
from ran_keras.tasks.detection.matching import sample_balanced
from ran_keras.tasks.detection.roi_align import roi_align
from ran_keras.tasks.detection.targets import roi_training_samples, rpn_targets


def _toy_batch(tmp_path):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(120, 90), (80, 140)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (tmp_path / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
        boxes = "".join(f"<object><name>{n}</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + 30}</xmax>"
                        f"<ymax>{y + 25}</ymax></bndbox></object>" for n, x, y in [("a", 5, 10), ("b", 40, 30)])
        (tmp_path / f"{i}.xml").write_text(f"<annotation><filename>{i}.png</filename>{boxes}</annotation>")
    source = DS.voc_source(tmp_path)
    return source, next(iter(DS.detection_pipeline(source, True, 2, seed=0, min_size=96, max_size=160)))


@pytest.mark.slow
def test_training_step_and_inference_compose(tmp_path):
    source, batch = _toy_batch(tmp_path)
    num_classes = source.num_classes + 1
    channels, anchors_per_cell = 8, A.num_anchors_per_location()
    head = tf.random.stateless_normal([7 * 7 * channels, 5 * num_classes], seed=[1, 1], stddev=0.01)

    @tf.function
    def step(batch):
        image = batch["image"]
        shape = tf.shape(image)
        features = tf.nn.avg_pool2d(tf.tile(image[..., :1], [1, 1, 1, channels]), 32, 32, "VALID")
        feature_size = tf.shape(features)[1:3]
        objectness = tf.reduce_mean(features, -1, keepdims=True) * tf.ones([anchors_per_cell])
        deltas = tf.zeros(tf.concat([tf.shape(features)[:3], [4 * anchors_per_cell]], 0))
        objectness, deltas = P.flatten_rpn_outputs(objectness, deltas)
        anchors = A.grid_anchors(shape[1:3], feature_size)
        gt_valid = batch["box_trainable"]
        labels, targets = rpn_targets(anchors, batch["boxes"], gt_valid)
        pos, neg = sample_balanced(labels, 256, 0.5, seed=[0, 1])
        rpn_obj, rpn_box = rpn_losses(objectness, deltas, labels, targets, pos, neg)
        proposals = P.select_proposals(anchors, objectness, deltas, batch["image_size"], 2000, 2000)
        samples = roi_training_samples(proposals["boxes"], proposals["valid"], batch["boxes"], batch["classes"],
                                       gt_valid, seed=[0, 2], batch_size_per_image=64)
        rois = tf.reshape(samples["rois"], [-1, 4])
        index = tf.repeat(tf.range(tf.shape(image)[0]), 64)
        pooled = tf.reshape(roi_align(features, rois, index), [-1, 7 * 7 * channels])
        out = tf.reshape(pooled @ head, [2, 64, 5 * num_classes])
        cls, box = roi_head_losses(out[..., :num_classes], out[..., num_classes:], samples["labels"],
                                   samples["regression_targets"], samples["valid"])
        det = P.detect(out[..., :num_classes], out[..., num_classes:], samples["rois"], samples["valid"],
                       batch["image_size"], batch["original_size"])
        return (rpn_obj, rpn_box, cls, box), det, samples

    losses, det, samples = step(batch)
    assert all(np.isfinite(float(v)) for v in losses)
    assert float(losses[0]) == pytest.approx(np.log(2), abs=0.05)          # objectness logits near 0
    assert samples["valid"].numpy().sum() == 128                           # 64 RoIs per image
    assert det["boxes"].shape == (2, 100, 4)
    ev = CocoEvaluator()
    ev.update(batch["image_id"], det["boxes"], det["scores"], det["classes"], batch["original_boxes"],
              batch["classes"], det["valid"], batch["box_valid"], batch["is_crowd"], batch["area"])
    assert 0.0 <= ev.result()["AP50"] <= 1.0
