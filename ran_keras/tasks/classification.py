"""Image classification: a spec's network, one-hot labels, label-smoothed cross-entropy, top-1/top-5.

Data come from ``ran_keras.data.classification`` (digits, TFDS, image folders), seeded per epoch
and example; mixup/CutMix mix the one-hot labels there. The model is trained on logits
(``classifier_activation=None``) and exported as ``model.keras`` (float32, softmax) with
``model.spec.json`` beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from ran_keras import fileio
from ran_keras.analysis.profiler import profile_spec
from ran_keras.backend import keras, tf
from ran_keras.data import classification as data
from ran_keras.registry import create_model
from ran_keras.report import fmt_count
from ran_keras.spec import NetworkSpec, scale_width, with_activation, with_drop_path
from ran_keras.tasks.base import Task
from ran_keras.train.config import ConfigError, TrainConfig, model_spec


def apply_drop_path(spec: NetworkSpec, rate: float) -> NetworkSpec:
    """--drop_path_rate: ConvNeXt's linear stochastic-depth rule over the blocks that have ``drop_path``."""
    if not any(b.has("drop_path") for b in spec.blocks()):
        raise ConfigError(f"--drop_path_rate: {spec.name} has no blocks with a drop_path field (ConvNeXt-style "
                          f"blocks have one); leave the flag unset for this model")
    return with_drop_path(spec, rate)


def prepare_spec(cfg: TrainConfig, spec: Optional[NetworkSpec] = None) -> NetworkSpec:
    """The spec a run trains: --model (or ``spec``) with --width, --activation and --drop_path_rate."""
    if spec is None:
        spec = model_spec(cfg)
    if cfg.width != 1.0:
        spec = scale_width(spec, cfg.width, rounding="round", name=f"{spec.name}_w{cfg.width:g}")
    if cfg.activation:
        spec = with_activation(spec, cfg.activation)
    if cfg.drop_path_rate is not None:
        spec = apply_drop_path(spec, cfg.drop_path_rate)
    return spec


class ClassificationTask(Task):
    """Classify images into ``classes`` (--classes, else the dataset's) with the network of ``spec``."""

    name = "classification"
    percent = ("accuracy", "top5")

    def __init__(self, cfg: TrainConfig, spec: Optional[NetworkSpec] = None):
        super().__init__(cfg)
        self.spec = prepare_spec(cfg, spec)

    def setup(self, strategy) -> None:
        cfg, spec = self.cfg, self.spec
        self.source = data.load_source(cfg)
        self.classes = cfg.classes or self.source.num_classes
        if self.classes < self.source.num_classes:
            raise ConfigError(f"--classes={self.classes} is smaller than the {self.source.num_classes} classes of "
                              f"{self.source.name}")
        self.image_size = cfg.image_size or spec.input_size
        self.input_shape = (self.image_size, self.image_size, spec.input_channels)
        spec.check_input_shape(self.input_shape)
        self.pipeline = data.Pipeline(self.source, cfg, image_size=self.image_size, channels=spec.input_channels,
                                      mean=spec.input_mean, std=spec.input_std, num_classes=self.classes,
                                      global_batch=cfg.batch_size)
        self.train_examples, self.data_name = self.source.train_examples, self.source.name

    def resolved(self) -> Dict[str, Any]:
        return {"image_size": self.image_size}

    def build_model(self):
        return create_model(self.spec, self.input_shape, classes=self.classes, classifier_activation=None,
                            seed=self.cfg.seed)

    def build_inputs(self, training: bool, epoch: int = 0, skip: int = 0):
        return self.pipeline.train(epoch, skip) if training else self.pipeline.eval()

    def build_losses(self, labels, outputs, model, training: bool = True):
        smoothing = self.cfg.label_smoothing if training else 0.0
        per_example = keras.losses.categorical_crossentropy(labels, outputs, from_logits=True,
                                                            label_smoothing=smoothing)
        ce = tf.nn.compute_average_loss(per_example, global_batch_size=self.cfg.batch_size)
        return ce, {"ce": ce}

    def build_metrics(self, training: bool) -> List[Any]:
        metrics = [keras.metrics.CategoricalAccuracy("accuracy")]
        if not training:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(min(5, self.classes), "top5"))
        return metrics

    def fingerprint(self) -> Dict[str, Any]:
        return self.spec.to_dict()

    def describe(self) -> List[str]:
        cfg = self.cfg
        prof = profile_spec(self.spec, self.input_shape, classes=self.classes)
        return [f"model {self.spec.name}: {fmt_count(prof.params)} params, {fmt_count(prof.macs)} MACs at "
                f"{self.image_size}x{self.image_size}, {self.classes} classes",
                f"data {self.source.description}; label smoothing {cfg.label_smoothing:g}; augment {cfg.augment}; "
                f"mixup {cfg.mixup:g} cutmix {cfg.cutmix:g}"]

    def export(self, model, model_dir: Path) -> Path:
        """The trained weights as a float32 softmax model (``model.keras``) plus its spec (a QAT run's
        float weights, without the fake quantisation)."""
        final = create_model(self.spec, self.input_shape, classes=self.classes, seed=self.cfg.seed)
        if any(type(layer).__name__.startswith("QuantizeWrapper") for layer in model.layers):
            from ran_keras.quant.qat import float_weights   # a QAT run: by name, through the wrappers
            float_weights(final, model)
        else:
            final.set_weights(model.get_weights())
        path = Path(model_dir) / "model.keras"
        with fileio.atomic_path(path, suffix=".keras") as tmp:
            final.save(tmp)
        self.spec.save(Path(model_dir) / "model.spec.json")
        return path

    def result_fields(self) -> Dict[str, Any]:
        prof = profile_spec(self.spec, self.input_shape, classes=self.classes)
        return {"params": prof.params, "macs": prof.macs, "image_size": self.image_size, "classes": self.classes,
                "dataset": self.source.name}
