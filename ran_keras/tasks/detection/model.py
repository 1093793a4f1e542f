"""The slim two-stage detector in tf_keras: backbone + RPN (one functional model) and the RoI head.

``backbone_rpn`` maps an image batch to the backbone's stride-32 feature map, the RPN's
objectness logits (B, H, W, A) and box deltas (B, H, W, 4 A): one 3x3 conv (C -> C) + ReLU, then a
1x1 objectness conv and a 1x1 box conv (torchvision's RPNHead, normal(0.01) init, zero bias).
It is a plain feed-forward graph, so it converts to int8 TFLite and Vela. ``roi_head`` maps
RoIAligned 7x7 features to class logits and per-class box deltas: flatten, two ReLU FC layers of
the representation size (TwoMLPHead), class and box layers (FastRCNNPredictor). ``Detector``
ties them with the building blocks (anchors, proposals, RoIAlign, sampling, losses,
post-processing); proposal selection, RoIAlign and NMS are the CPU work between the two.

The backbone is ``create_model(spec, features_only=True, out_indices=(stage,))``, so its layers
carry the classification model's names and ``--backbone_weights`` can load a saved zoo model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from ran_keras import fileio
from ran_keras.backend import keras, tf
from ran_keras.errors import RanError
from ran_keras.tasks.detection import postprocess as post
from ran_keras.tasks.detection.anchors import grid_anchors
from ran_keras.tasks.detection.config import DetectorConfig, backbone_spec, feature_info
from ran_keras.tasks.detection.errors import DetectionError
from ran_keras.tasks.detection.losses import roi_head_losses, rpn_losses
from ran_keras.tasks.detection.matching import sample_balanced
from ran_keras.tasks.detection.roi_align import roi_align
from ran_keras.tasks.detection.targets import roi_training_samples, rpn_targets

#: files of a saved detector (``Detector.save_dir``)
CONFIG_FILE, BACKBONE_FILE, HEAD_FILE, SPEC_FILE = "detector.json", "backbone_rpn.keras", "roi_head.keras", \
    "backbone.spec.json"
LOSS_TERMS = ("rpn_objectness", "rpn_box", "roi_classifier", "roi_box")


def build_backbone_rpn(config: DetectorConfig, spec, input_shape: Sequence[Optional[int]] = (None, None, 3),
                       seed: Optional[int] = None):
    """Functional model: image -> [features, objectness (B, H, W, A), box deltas (B, H, W, 4 A)]."""
    from ran_keras.registry import create_model
    info = feature_info(config, spec)
    backbone = create_model(spec, tuple(input_shape), features_only=True, out_indices=(info.index,), seed=seed)
    features = backbone.outputs[0]
    a, c, name = config.anchors_per_location, info.channels, config.name
    init = lambda k: keras.initializers.RandomNormal(0.0, 0.01, seed=None if seed is None else seed + k)  # noqa: E731
    x = keras.layers.Conv2D(c, 3, padding="same", activation="relu", kernel_initializer=init(1),
                            name=f"{name}_rpn_conv")(features)
    objectness = keras.layers.Conv2D(a, 1, kernel_initializer=init(2), name=f"{name}_rpn_objectness")(x)
    deltas = keras.layers.Conv2D(4 * a, 1, kernel_initializer=init(3), name=f"{name}_rpn_box")(x)
    return keras.Model(backbone.inputs, [features, objectness, deltas], name=f"{name}_backbone_rpn")


def build_roi_head(config: DetectorConfig, channels: int, seed: Optional[int] = None):
    """Functional model: pooled RoIs (K, s, s, C) -> [class logits (K, classes), box deltas (K, 4 classes)]."""
    s, r, k, name = config.roi_output_size, config.representation_size, config.num_classes, config.name
    init = lambda i, std=None: (keras.initializers.GlorotUniform(seed=None if seed is None else seed + i)  # noqa
                                if std is None else keras.initializers.RandomNormal(0.0, std, seed=None if seed
                                                                                    is None else seed + i))
    pooled = keras.Input((s, s, channels), name=f"{name}_roi_input")
    x = keras.layers.Flatten(name=f"{name}_roi_flatten")(pooled)
    x = keras.layers.Dense(r, activation="relu", kernel_initializer=init(11), name=f"{name}_fc6")(x)
    x = keras.layers.Dense(r, activation="relu", kernel_initializer=init(12), name=f"{name}_fc7")(x)
    logits = keras.layers.Dense(k, kernel_initializer=init(13, 0.01), name=f"{name}_cls_score")(x)
    boxes = keras.layers.Dense(4 * k, kernel_initializer=init(14, 0.001), name=f"{name}_bbox_pred")(x)
    return keras.Model(pooled, [logits, boxes], name=f"{name}_roi_head")


class Detector(keras.Model):
    """The two stages and what runs between them. ``call`` is inference: a dict with ``image``
    (B, H, W, 3) normalised and padded to 32, ``image_size`` (B, 2) the resized size and
    optionally ``original_size`` (B, 2) -> ``postprocess.detect``'s dict (boxes in original pixels
    when ``original_size`` is given). ``run`` also gives the training losses."""

    def __init__(self, config: DetectorConfig, backbone_rpn, roi_head, stride: int, **kwargs):
        super().__init__(name=config.name, **kwargs)
        self.config, self.stride = config, int(stride)
        self.backbone_rpn, self.roi_head = backbone_rpn, roi_head

    # -- stages --

    def rpn(self, images, training: bool = False):
        """(features, objectness (B, N), deltas (B, N, 4), anchors (N, 4)) for padded images."""
        cfg = self.config
        features, objectness, deltas = self.backbone_rpn(images, training=training)
        anchors = grid_anchors(tf.shape(images)[1:3], tf.shape(features)[1:3], cfg.anchor_sizes, cfg.aspect_ratios)
        objectness, deltas = post.flatten_rpn_outputs(objectness, deltas)
        return features, objectness, deltas, anchors

    def proposals(self, anchors, objectness, deltas, image_sizes, training: bool):
        pre, post_nms = self.config.proposals(training)
        return post.select_proposals(anchors, objectness, deltas, image_sizes, pre, post_nms, self.config.rpn_nms)

    def box_head(self, features, rois, training: bool = False):
        """Class logits (B, R, K) and box deltas (B, R, 4 K) for RoIs (B, R, 4) in image pixels."""
        cfg = self.config
        batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
        index = tf.repeat(tf.range(batch), count)
        pooled = roi_align(features, tf.reshape(rois, [-1, 4]), index, cfg.roi_output_size, 1.0 / self.stride,
                           cfg.roi_sampling_ratio)
        logits, boxes = self.roi_head(pooled, training=training)
        return (tf.reshape(logits, [batch, count, cfg.num_classes]),
                tf.reshape(boxes, [batch, count, 4 * cfg.num_classes]))

    # -- passes --

    def call(self, inputs, training: bool = False):
        return self.run(inputs, training=training)["detections"]

    def run(self, inputs, gt: Optional[Dict] = None, seed=None, training: bool = False,
            detections: bool = True) -> Dict:
        """One pass sharing the backbone: ``losses`` (``LOSS_TERMS``, torchvision's normalisation)
        when ``gt`` is given (``boxes`` (B, G, 4) in resized pixels, ``classes``, ``trainable``
        (B, G)) with ``seed`` (2 ints, draws the anchor and RoI samples), and ``detections``
        (``postprocess.detect``'s dict) unless ``detections`` is False. Proposals follow the
        training counts when ``training``, else the test counts."""
        cfg, out = self.config, {}
        image_sizes = inputs["image_size"]
        features, objectness, deltas, anchors = self.rpn(inputs["image"], training)
        props = self.proposals(anchors, objectness, deltas, image_sizes, training)
        if gt is not None:
            rpn_seed, roi_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
            labels, targets = rpn_targets(anchors, gt["boxes"], gt["trainable"], cfg.rpn_fg_iou, cfg.rpn_bg_iou)
            positive, negative = sample_balanced(labels, cfg.rpn_batch_per_image, cfg.rpn_positive_fraction,
                                                 rpn_seed)
            rpn_obj, rpn_box = rpn_losses(objectness, deltas, labels, targets, positive, negative)
            samples = roi_training_samples(props["boxes"], props["valid"], gt["boxes"], gt["classes"],
                                           gt["trainable"], roi_seed, cfg.roi_batch_per_image,
                                           cfg.roi_positive_fraction, cfg.roi_fg_iou, cfg.roi_bg_iou)
            logits, boxes = self.box_head(features, samples["rois"], training)
            cls_loss, box_loss = roi_head_losses(logits, boxes, samples["labels"], samples["regression_targets"],
                                                 samples["valid"])
            out["losses"] = dict(zip(LOSS_TERMS, (rpn_obj, rpn_box, cls_loss, box_loss)))
        if detections:
            logits, boxes = self.box_head(features, props["boxes"], training)
            out["detections"] = post.detect(logits, boxes, props["boxes"], props["valid"], image_sizes,
                                            inputs.get("original_size"), cfg.score_threshold, cfg.nms_threshold,
                                            cfg.detections_per_image)
        return out

    # -- files --

    def save_dir(self, folder, backbone_spec_obj) -> Path:
        """Write the detector to ``folder``: detector.json, the two Keras models, the backbone spec."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for model, filename in ((self.backbone_rpn, BACKBONE_FILE), (self.roi_head, HEAD_FILE)):
            with fileio.atomic_path(folder / filename, suffix=".keras") as tmp:
                model.save(tmp)
        backbone_spec_obj.save(folder / SPEC_FILE)
        fileio.write_text(folder / CONFIG_FILE, json.dumps({"config": self.config.to_dict(), "stride": self.stride},
                                                           indent=1) + "\n")
        return folder / CONFIG_FILE


def build_detector(config: DetectorConfig, spec=None, input_shape: Sequence[Optional[int]] = (None, None, 3),
                   seed: Optional[int] = None, backbone_weights: Optional[str] = None) -> Detector:
    """A Detector for ``config`` (backbone ``spec``, default the one ``config.backbone`` names), its
    backbone optionally initialised from a saved zoo model (``load_backbone_weights``)."""
    spec = backbone_spec(config, spec)
    info = feature_info(config, spec)
    backbone_rpn = build_backbone_rpn(config, spec, input_shape, seed)
    if backbone_weights:
        load_backbone_weights(backbone_rpn, backbone_weights)
    roi_head = build_roi_head(config, info.channels, seed)
    return Detector(config, backbone_rpn, roi_head, info.reduction)


def load_backbone_weights(backbone_rpn, path) -> int:
    """Copy the weights of every backbone layer from a saved zoo model (.keras/.h5: a classifier or a
    ``features_only`` model of the same spec) by layer name; returns how many layers were loaded.
    Every backbone layer with weights must be found with the same shapes."""
    from ran_keras.builder import load_model
    source = {layer.name: layer for layer in load_model(path).layers}
    loaded, missing = 0, []
    for layer in backbone_rpn.layers:
        if not layer.weights or "_rpn_" in layer.name:
            continue
        other = source.get(layer.name)
        if other is None or [w.shape for w in other.weights] != [w.shape for w in layer.weights]:
            missing.append(layer.name)
            continue
        layer.set_weights(other.get_weights())
        loaded += 1
    if missing:
        raise RanError(f"--backbone_weights {str(path)!r}: {len(missing)} backbone layer(s) are not in it with the "
                       f"same shapes (e.g. {missing[0]!r}); pass a model saved from the same backbone spec "
                       f"(`ran train` writes model.keras; the layer names start with the spec name)")
    return loaded


def load_detector(folder) -> Detector:
    """A detector written by ``Detector.save_dir`` (or a training run's ``detector/`` folder)."""
    from ran_keras.builder import load_model
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise DetectionError(f"{str(folder)!r} is not a saved detector: no {CONFIG_FILE} in it (`ran detect train` "
                             f"writes one to MODEL_DIR/detector)")
    data = json.loads(path.read_text(encoding="utf-8"))
    config = DetectorConfig.from_dict(data["config"])
    return Detector(config, load_model(folder / BACKBONE_FILE), load_model(folder / HEAD_FILE), data["stride"])
