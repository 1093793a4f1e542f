"""Object detection as a training-loop task (``--task=detection``): the slim two-stage detector.

--model names a registered detector (``ran_keras.tasks.detection.zoo``) or a detector config
.json. --dataset is TFDS ``coco/2017`` (prepared in --data_dir; --train_split / --eval_split),
``deepforest`` (the offline demo: crops of three samples for training, OSBS_029 held out),
``voc:ANNOTATIONS[:IMAGES]`` or ``coco_json:FILE:IMAGES``; --eval_dataset gives file data's
held-out part. The loss is the sum of the four detector losses, normalised as torchvision does;
evaluation aggregates COCO AP over the whole pass (pycocotools), logged as eval_AP etc. The
export is ``MODEL_DIR/detector/`` (``model.load_detector`` reads it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ran_keras.backend import tf
from ran_keras.report import fmt_count
from ran_keras.tasks.base import Task
from ran_keras.tasks.detection import datasets as ds
from ran_keras.tasks.detection.coco_eval import CocoEvaluator
from ran_keras.tasks.detection.config import DetectorConfig, resize_shape
from ran_keras.tasks.detection.errors import DetectionError
from ran_keras.tasks.detection.config import backbone_spec
from ran_keras.tasks.detection.model import LOSS_TERMS, build_detector
from ran_keras.tasks.detection.zoo import resolve_detector
from ran_keras.train.config import ConfigError, TrainConfig

#: the COCO metrics a pass reports (fractions; logged as eval_<name>)
AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DATASET_FORMS = "coco/2017 (TFDS, --data_dir), deepforest, voc:ANNOTATIONS[:IMAGES], coco_json:FILE:IMAGES"
#: the deepforest demo: training crops come from these samples, OSBS_029 is held out whole
DEEPFOREST_TRAIN = ("SOAP_061", "2019_YELL_2_541000_4977000_image_crop", "2019_YELL_2_528000_4978000_image_crop2")
DEEPFOREST_EVAL = ("OSBS_029",)


def detector_config(cfg: TrainConfig) -> DetectorConfig:
    """The detector --model names, with --min_size / --max_size / --classes applied."""
    if not cfg.model:
        raise ConfigError("--model is required: a registered detector (ran detect list) or a detector config .json")
    try:
        config = resolve_detector(cfg.model)
        changes = {k: getattr(cfg, k) for k in ("min_size", "max_size") if getattr(cfg, k) is not None}
        if cfg.classes:
            changes["num_classes"] = cfg.classes + 1
        return config.replace(**changes) if changes else config
    except DetectionError as err:
        raise ConfigError(f"--model: {err}") from None


def open_source(text: str, split: Optional[str], data_dir: Optional[str], work_dir: Path, training: bool,
                class_names=None) -> ds.DetectionSource:
    """A DetectionSource for one --dataset / --eval_dataset value (see DATASET_FORMS)."""
    kind, _, rest = text.partition(":")
    if text.startswith("coco/") or text == "coco":
        return ds.tfds_coco_source(split or ("train" if training else "validation"), data_dir,
                                   text if "/" in text else "coco/2017")
    if text == "deepforest":
        from ran_keras.tasks.detection import deepforest_data
        if training:
            folder = work_dir / "deepforest_crops"
            if not (folder / "done").is_file():
                deepforest_data.write_crops(folder, DEEPFOREST_TRAIN)
                (folder / "done").write_text("ok\n")
            return ds.voc_source(folder, class_names=class_names)
        return deepforest_data.source(DEEPFOREST_EVAL, class_names=class_names)
    if kind == "voc" and rest:
        annotations, _, images = rest.partition(":")
        return ds.voc_source(annotations, images or None, class_names=class_names)
    if kind == "coco_json" and rest.count(":") == 1:
        annotation_file, images = rest.split(":")
        return ds.coco_json_source(annotation_file, images)
    raise ConfigError(f"--dataset / --eval_dataset: cannot read {text!r}; accepted forms: {DATASET_FORMS}")


class DetectionTask(Task):
    """Train and evaluate a ``Detector`` (``ran_keras.tasks.detection.model``)."""

    name = "detection"
    percent = AP_METRICS

    def __init__(self, cfg: TrainConfig, spec=None):
        super().__init__(cfg)
        self.config = detector_config(cfg)
        self.spec = backbone_spec(self.config, spec)

    # -- set-up --

    def setup(self, strategy) -> None:
        cfg = self.cfg
        if not cfg.dataset:
            raise ConfigError(f"--dataset is required for --task=detection: {DATASET_FORMS}")
        work = Path(cfg.model_dir or ".") / "data"
        try:
            self.train_source = open_source(cfg.dataset, cfg.train_split, cfg.data_dir, work, True)
            names = self.train_source.class_names
            held_out = cfg.eval_dataset or (cfg.dataset if cfg.dataset.startswith("coco") or
                                            cfg.dataset == "deepforest" else None)
            if held_out is None:
                raise ConfigError(f"--eval_dataset is required with --dataset={cfg.dataset} (file data has no "
                                  f"held-out split); same forms: {DATASET_FORMS}")
            self.eval_source = open_source(held_out, cfg.eval_split, cfg.data_dir, work, False, names)
        except DetectionError as err:
            raise ConfigError(f"--dataset: {err}") from None
        classes = self.train_source.num_classes + 1
        if self.config.num_classes < classes:
            raise ConfigError(f"{self.config.name} has {self.config.num_classes} classes (with background), "
                              f"{self.train_source.name} needs {classes}; pass --classes={classes - 1}")
        self.train_examples, self.data_name = self.train_source.num_examples, self.train_source.name

    def resolved(self) -> Dict[str, Any]:
        return {"min_size": self.config.min_size, "max_size": self.config.max_size}

    def build_model(self):
        return build_detector(self.config, self.spec, seed=self.cfg.seed, backbone_weights=self.cfg.backbone_weights)

    # -- data --

    def build_inputs(self, training: bool, epoch: int = 0, skip: int = 0):
        cfg, config = self.cfg, self.config
        size = dict(min_size=config.min_size, max_size=config.max_size)
        if not training:
            data = ds.detection_pipeline(self.eval_source, False, cfg.batch_size, **size)
            return data.enumerate().map(lambda i, b: self._split(b, [cfg.seed, i]))
        steps = cfg.steps_per_epoch or max(1, (self.train_examples or 1) // cfg.batch_size)
        passes = max(1, math.ceil(steps * cfg.batch_size / max(1, self.train_examples or 1))) + 1
        data = None
        for k in range(passes):   # an epoch longer than the data takes further passes, each reseeded
            part = ds.detection_pipeline(self.train_source, True, cfg.batch_size, seed=cfg.seed,
                                         epoch=epoch * passes + k, **size)
            part = part.enumerate().map(lambda i, b, k=k: self._split(b, [epoch * passes + k, i]))
            data = part if data is None else data.concatenate(part)
        return data.skip(skip // cfg.batch_size)

    def _split(self, batch, seed):
        """(features, labels) of a pipeline batch; every image carries the batch's sample seed."""
        count = tf.shape(batch["image"])[0]
        seed = tf.stack([tf.cast(seed[0], tf.int64) + 7919 * self.cfg.seed, tf.cast(seed[1], tf.int64)])
        features = {"image": batch["image"], "image_size": batch["image_size"],
                    "original_size": batch["original_size"], "sample_seed": tf.tile(seed[None], [count, 1])}
        labels = {k: batch[k] for k in ("image_id", "boxes", "classes", "box_trainable", "box_valid",
                                        "original_boxes", "is_crowd", "area")}
        return features, labels

    # -- steps --

    def forward(self, model, features, labels, training: bool):
        gt = {"boxes": labels["boxes"], "classes": labels["classes"], "trainable": labels["box_trainable"]}
        out = model.run(features, gt, features["sample_seed"][0], training=training, detections=not training)
        count = tf.shape(features["image"])[0]
        outputs = {f"loss_{k}": tf.fill([count], tf.cast(v, tf.float32)) for k, v in out["losses"].items()}
        if not training:
            outputs.update(out["detections"])
        return outputs

    def build_losses(self, labels, outputs, model, training: bool = True):
        share = tf.cast(tf.shape(labels["image_id"])[0], tf.float32) / self.cfg.batch_size
        terms = {k: outputs[f"loss_{k}"][0] * share for k in LOSS_TERMS}
        return tf.add_n(list(terms.values())), terms

    def aggregate_logs(self, state, labels, outputs):
        state = state or CocoEvaluator()
        state.update(labels["image_id"], outputs["boxes"], outputs["scores"], outputs["classes"],
                     labels["original_boxes"], labels["classes"], outputs["valid"], labels["box_valid"],
                     labels["is_crowd"], labels["area"])
        return state

    def reduce_aggregated_logs(self, state) -> Dict[str, float]:
        if state is None:
            return {}
        result = state.result()
        return {k: result[k] for k in AP_METRICS if result[k] >= 0}   # -1: no ground truth of that size

    # -- records --

    def fingerprint(self) -> Dict[str, Any]:
        return {"name": self.config.name, "detector": self.config.to_dict(), "backbone": self.spec.to_dict()}

    def _profile(self):
        from ran_keras.tasks.detection.profiling import profile_detector
        size = resize_shape(self.config, self.config.min_size, self.config.min_size)
        return profile_detector(self.config, size, spec=self.spec)

    def describe(self) -> List[str]:
        prof = self._profile()
        parts = ", ".join(f"{k} {fmt_count(p.macs)}" for k, p in prof.parts.items())
        return [f"detector {self.config.name} on {self.spec.name}: {fmt_count(prof.params)} params; MACs at "
                f"{prof.image_size[0]}x{prof.image_size[1]} with {prof.rois} RoIs: {fmt_count(prof.macs)} ({parts})",
                f"data {self.train_source.name} ({self.train_source.num_examples} images, "
                f"{self.train_source.num_classes} classes) -> held out {self.eval_source.name}; images resized to "
                f"{self.config.min_size}/{self.config.max_size}"]

    def export(self, model, model_dir: Path) -> Path:
        return model.save_dir(Path(model_dir) / "detector", self.spec)

    def result_fields(self) -> Dict[str, Any]:
        prof = self._profile()
        return {"params": prof.params, "macs": prof.macs, "macs_at": {"image_size": list(prof.image_size),
                                                                      "rois": prof.rois},
                "macs_by_part": {k: p.macs for k, p in prof.parts.items()}, "classes": self.config.num_classes,
                "dataset": self.train_source.name, "eval_dataset": self.eval_source.name}
