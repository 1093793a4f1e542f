"""Training configuration: every knob of a run, and the named recipes that preset them.

A ``TrainConfig`` holds every value a training or search run uses. A recipe is a named preset of
some of those values (the paper's ``ran_e``, ConvNeXt's ``convnext``, the offline ``digits``
demo); anything given explicitly overrides the recipe. ``experiments/flags.py`` turns each field
into an absl flag, so every recipe value can be overridden on the command line.

Pure Python (no TensorFlow): configs are resolved, validated and inspected without Keras, and
``model_spec`` resolves --model, so a bad value fails before TensorFlow starts. The learning-rate
schedule is ``ran_keras.train.trainer.WarmupSchedule``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ran_keras.errors import ConfigError, close_matches
from ran_keras.fileio import json_text


def _f(default: Any, help: str, choices: Optional[Tuple[Any, ...]] = None, group: str = "train"):
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("rmsprop", "adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant", "step")
AUGMENTS = ("none", "autoaugment", "randaugment")
WEIGHT_DECAY_MODES = ("l2", "decoupled")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run. ``None`` means "the recipe's, or the dataset's/model's default"."""

    # --- model -------------------------------------------------------------------------------
    task: str = _f("classification", "what is trained and how it is scored: a registered task (ran_keras.tasks)",
                   group="model")
    model: Optional[str] = _f(None, "registered model name (`ran list`) or a spec .json path", group="model")
    activation: Optional[str] = _f(None, "replace every non-linearity (not the AFRB PReLUs), e.g. relu6",
                                   group="model")
    width: float = _f(1.0, "width multiplier on block channels (ran_keras.spec.scale_width, 'round')",
                      group="model")
    image_size: Optional[int] = _f(None, "square input size; default: the spec's input_size (digits: 32)",
                                   group="model")
    classes: Optional[int] = _f(None, "classifier size; default: the dataset's number of classes", group="model")
    drop_path_rate: Optional[float] = _f(None, "stochastic depth: linear 0 -> rate over the blocks that have "
                                               "a drop_path field; default: keep the spec's values", group="model")
    seed: int = _f(0, "seed for initialisation, shuffling and augmentation", group="model")
    qat: bool = _f(False, "quantisation-aware training (tfmot fake quantisation); the run also writes "
                          "model_int8.tflite (int8, no representative data) beside model.keras", group="model")
    init_model: Optional[str] = _f(None, "with --qat: float .keras model to fine-tune from (e.g. a finished run's "
                                         "model.keras); default: the seeded initialisation", group="model")

    # --- data --------------------------------------------------------------------------------
    dataset: Optional[str] = _f(None, "'digits' (scikit-learn, offline) or a TFDS name such as imagenet2012",
                                group="data")
    data_dir: Optional[str] = _f(None, "TFDS data_dir holding prepared datasets", group="data")
    manual_dir: Optional[str] = _f(None, "TFDS manual_dir with the raw files (imagenet2012: "
                                         "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar); the "
                                         "dataset is prepared from it if it is not prepared yet", group="data")
    download: bool = _f(False, "let TFDS download a dataset that is not prepared (off: nothing is downloaded)",
                        group="data")
    image_folder: Optional[str] = _f(None, "class-per-folder images: DIR/<class>/*.jpg, or DIR/train and "
                                           "DIR/val(idation) each laid out so", group="data")
    train_split: str = _f("train", "training split", group="data")
    eval_split: Optional[str] = _f(None, "held-out split; default validation, else test", group="data")
    validation_fraction: float = _f(0.2, "held-out fraction where a dataset has no held-out split "
                                         "(digits, a flat image folder)", group="data")
    shuffle_buffer: int = _f(10000, "examples in the shuffle buffer", group="data")
    crop_min_scale: float = _f(0.08, "random-resized-crop: smallest crop area fraction (1 = no crop)",
                               group="data")
    eval_crop_fraction: float = _f(0.875, "centre crop of the short side before resizing for evaluation",
                                   group="data")
    random_flip: Optional[bool] = _f(None, "random horizontal flips; default on, off for digits", group="data")
    augment: str = _f("none", "policy augmentation on the training images", AUGMENTS, group="data")
    randaugment_layers: int = _f(2, "RandAugment: ops per image (N)", group="data")
    randaugment_magnitude: float = _f(9.0, "RandAugment: magnitude (M, 0-10)", group="data")
    randaugment_magnitude_std: float = _f(0.5, "RandAugment: std of the per-op magnitude noise", group="data")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy", group="data")
    mixup: float = _f(0.0, "mixup Beta(a, a) parameter; 0 disables", group="data")
    cutmix: float = _f(0.0, "CutMix Beta(a, a) parameter; 0 disables", group="data")
    mix_switch_prob: float = _f(0.5, "with both mixup and CutMix on: probability of CutMix for a batch",
                                group="data")

    # --- detection (--task=detection) ----------------------------------------------------------
    backbone_weights: Optional[str] = _f(None, "detection: initialise the backbone from a saved zoo model "
                                               "(.keras/.h5 of the same backbone spec, e.g. a ran train model.keras)",
                                         group="detection")
    eval_dataset: Optional[str] = _f(None, "detection: held-out data in --dataset's forms (voc:DIR[:IMAGES], "
                                           "coco_json:FILE:IMAGES); TFDS coco/2017 uses --eval_split",
                                     group="detection")
    min_size: Optional[int] = _f(None, "detection: resize so the short side is this (default: the detector's, 800)",
                                 group="detection")
    max_size: Optional[int] = _f(None, "detection: ... unless the long side would pass this (default 1200)",
                                 group="detection")

    # --- optimisation ------------------------------------------------------------------------
    optimizer: str = _f("rmsprop", "optimizer", OPTIMIZERS, group="optim")
    learning_rate: float = _f(0.01, "peak learning rate for a global batch of lr_reference_batch", group="optim")
    lr_reference_batch: int = _f(256, "batch size learning_rate is quoted for; the peak rate scales "
                                      "linearly with the global batch", group="optim")
    lr_scaling: bool = _f(True, "scale the learning rate linearly with the global batch", group="optim")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up ('step': x lr_decay at each of lr_steps)",
                       SCHEDULES, group="optim")
    lr_steps: Optional[str] = _f(None, "with --schedule=step: comma-separated epochs at which the rate is "
                                       "multiplied by lr_decay, e.g. 16,22", group="optim")
    lr_decay: float = _f(0.1, "with --schedule=step: factor applied at each of lr_steps", group="optim")
    warmup_epochs: float = _f(0.0, "linear warm-up from 0 to the peak rate (epochs)", group="optim")
    min_learning_rate: float = _f(0.0, "cosine floor", group="optim")
    epochs: int = _f(1, "training epochs", group="optim")
    batch_size: int = _f(32, "GLOBAL batch size (split evenly over the replicas)", group="optim")
    momentum: float = _f(0.9, "momentum (RMSprop, SGD)", group="optim")
    rho: float = _f(0.9, "RMSprop decay of the squared-gradient average", group="optim")
    epsilon: float = _f(1e-3, "optimizer epsilon (RMSprop: inside the square root, as in TF1's RMSProp)",
                        group="optim")
    beta_1: float = _f(0.9, "Adam/AdamW beta_1", group="optim")
    beta_2: float = _f(0.999, "Adam/AdamW beta_2", group="optim")
    weight_decay: float = _f(0.0, "weight decay on conv/dense kernels (never BN, biases or AFRB alphas)",
                             group="optim")
    weight_decay_mode: str = _f("l2", "'l2': wd/2 * sum(w^2) added to the loss (TF reference style); "
                                      "'decoupled': AdamW-style w -= lr * wd * w", WEIGHT_DECAY_MODES,
                                group="optim")
    clip_grad_norm: Optional[float] = _f(None, "clip the global gradient norm", group="optim")
    ema: bool = _f(False, "keep an exponential moving average of the weights; the final model uses it",
                   group="optim")
    ema_decay: float = _f(0.9999, "EMA decay per step", group="optim")

    # --- run ---------------------------------------------------------------------------------
    model_dir: Optional[str] = _f(None, "output folder; re-running with the same folder resumes", group="run")
    strategy: str = _f("default", "tf.distribute strategy", STRATEGIES, group="run")
    tpu: Optional[str] = _f(None, "TPU name or grpc:// address (with --strategy=tpu)", group="run")
    num_cpu_devices: Optional[int] = _f(None, "split the CPU into N logical devices (try mirrored training "
                                              "without GPUs); must be set before TensorFlow starts", group="run")
    dtype: str = _f("float32", "compute dtype; bfloat16/float16 use Keras mixed precision", DTYPES, group="run")
    xla: bool = _f(False, "compile each step's forward and backward pass with XLA (jit_compile); the gradient "
                          "all-reduce, clipping and the loop stay outside it (the optimizer's update is also asked "
                          "for jit_compile, which tf_keras ignores without a GPU)", group="run")
    deterministic: bool = _f(False, "deterministic TensorFlow kernels (tf.config.experimental.enable_op_determinism;"
                                    " slower): the same run twice gives the same weights", group="run")
    steps_per_epoch: Optional[int] = _f(None, "default: training examples // global batch", group="run")
    eval_steps: Optional[int] = _f(None, "default: the whole held-out split", group="run")
    eval_every: int = _f(1, "evaluate every N epochs (and after the last)", group="run")
    checkpoint_every: Optional[int] = _f(None, "save a checkpoint every N steps (default: every epoch)",
                                         group="run")
    keep_checkpoints: int = _f(3, "checkpoints kept", group="run")
    log_every: int = _f(50, "print and write TensorBoard scalars every N steps", group="run")

    # --- derived helpers -----------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json_text(self.to_dict(), what="the configuration")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def peak_learning_rate(self) -> float:
        """learning_rate * batch_size / lr_reference_batch (or as given without scaling)."""
        if not self.lr_scaling:
            return self.learning_rate
        return self.learning_rate * self.batch_size / self.lr_reference_batch


FIELDS: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
#: the settings that say where the data comes from (one at a time)
DATA_SOURCES = ("dataset", "image_folder")

#: The named presets. Values not listed keep TrainConfig's defaults.
RECIPES: Dict[str, Dict[str, Any]] = {
    # Paper Appendix B (RAN-e on ImageNet): RMSprop lr 0.005 at batch 768, decay 0.9, momentum 0.9,
    # epsilon 0.001, cosine after 5 warm-up epochs, weight decay 5e-6, label smoothing 0.1,
    # AutoAugment, no mixup; 350 epochs (Table 2; Table 1 uses 100).
    "ran_e": dict(optimizer="rmsprop", learning_rate=0.005, lr_reference_batch=768, batch_size=768,
                  rho=0.9, momentum=0.9, epsilon=0.001, schedule="cosine", warmup_epochs=5,
                  weight_decay=5e-6, weight_decay_mode="l2", label_smoothing=0.1, augment="autoaugment",
                  mixup=0.0, cutmix=0.0, epochs=350, crop_min_scale=0.08, ema=False),
    # ConvNeXt (Liu et al. 2022) ImageNet-1k recipe, used for RAN-i (paper Appendix C): AdamW lr 4e-3
    # at batch 4096, weight decay 0.05, 300 epochs with 20 warm-up, EMA, RandAugment m9 n2,
    # mixup 0.8 / CutMix 1.0, label smoothing 0.1. Drop path comes per model from the spec.
    "convnext": dict(optimizer="adamw", learning_rate=4e-3, lr_reference_batch=4096, batch_size=4096,
                     beta_1=0.9, beta_2=0.999, epsilon=1e-8, weight_decay=0.05,
                     weight_decay_mode="decoupled", schedule="cosine", warmup_epochs=20, epochs=300,
                     ema=True, ema_decay=0.9999, augment="randaugment", randaugment_layers=2,
                     randaugment_magnitude=9.0, randaugment_magnitude_std=0.5, mixup=0.8, cutmix=1.0,
                     mix_switch_prob=0.5, label_smoothing=0.1, crop_min_scale=0.08),
    # Faster R-CNN as Arm trained the detector (paper Appendix E; torchvision's detection reference):
    # SGD momentum 0.9, lr 0.02 for a global batch of 16 (8 GPUs x 2), weight decay 1e-4, 26 epochs
    # with the rate x0.1 at epochs 16 and 22, linear warm-up over the first 1000 steps (~0.136 epoch).
    "faster_rcnn": dict(task="detection", optimizer="sgd", learning_rate=0.02, lr_reference_batch=16, batch_size=16,
                        momentum=0.9, weight_decay=1e-4, weight_decay_mode="l2", schedule="step", lr_steps="16,22",
                        lr_decay=0.1, warmup_epochs=0.136, epochs=26, dataset="coco/2017", log_every=20),
    # The offline demo: scikit-learn digits (8x8, upsampled) at 32x32 on a CPU in minutes.
    "digits": dict(dataset="digits", image_size=32, optimizer="adam", learning_rate=3e-3,
                   lr_reference_batch=32, batch_size=32, epsilon=1e-7, schedule="cosine", warmup_epochs=1,
                   weight_decay=0.0, label_smoothing=0.0, augment="none", crop_min_scale=0.85,
                   mixup=0.0, cutmix=0.0, epochs=20, log_every=100),
}


def check_recipe(name: Optional[str]) -> str:
    if name is None or name == "none":
        return "none"
    if name not in RECIPES:
        raise ConfigError(f"--recipe: unknown recipe {name!r}{close_matches(name, RECIPES)}; accepted: "
                          f"{', '.join(RECIPES)}, none")
    return name


def resolve_config(recipe: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """TrainConfig defaults, then the recipe's values, then ``overrides`` (None = not given)."""
    values: Dict[str, Any] = {}
    name = check_recipe(recipe)
    if name != "none":
        values.update(RECIPES[name])
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in given:
        if key not in FIELDS:
            raise ConfigError(f"unknown setting {key!r}{close_matches(key, FIELDS)}")
    for source in DATA_SOURCES:  # a data source given replaces the recipe's (--recipe=digits --image_folder=X)
        if source in given:
            for other in DATA_SOURCES:
                values.pop(other, None)
    values.update(given)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the flag for any value out of range."""
    for name, f in FIELDS.items():
        choices = f.metadata.get("choices")
        value = getattr(cfg, name)
        if choices and value not in choices:
            raise ConfigError(f"--{name}: must be one of {', '.join(map(str, choices))}, got {value!r}")

    def need(name: str, ok, what: str):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not ok(value)):
            raise ConfigError(f"--{name}: must be {what}, got {value!r}")

    positive_ints = ("epochs", "batch_size", "lr_reference_batch", "shuffle_buffer", "eval_every",
                     "keep_checkpoints", "log_every", "image_size", "classes", "steps_per_epoch", "eval_steps",
                     "checkpoint_every", "num_cpu_devices", "randaugment_layers")
    for name in positive_ints:
        need(name, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    for name in ("learning_rate", "width", "epsilon", "clip_grad_norm"):
        need(name, lambda v: isinstance(v, (int, float)) and v > 0 and math.isfinite(v), "a positive number")
    for name in ("weight_decay", "warmup_epochs", "min_learning_rate", "mixup", "cutmix",
                 "randaugment_magnitude_std"):
        need(name, lambda v: isinstance(v, (int, float)) and v >= 0 and math.isfinite(v), "a number >= 0")
    for name in ("rho", "beta_1", "beta_2", "momentum", "label_smoothing"):
        need(name, lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)")
    need("ema_decay", lambda v: isinstance(v, (int, float)) and 0 < v < 1, "in (0, 1)")
    for name in ("crop_min_scale", "eval_crop_fraction", "mix_switch_prob"):
        need(name, lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "in (0, 1]")
    need("min_size", lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    need("max_size", lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    need("lr_decay", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "in (0, 1]")
    if cfg.schedule == "step":
        lr_step_epochs(cfg)
    need("validation_fraction", lambda v: 0 < v < 1, "in (0, 1)")
    need("randaugment_magnitude", lambda v: 0 <= v <= 10, "in [0, 10]")
    need("drop_path_rate", lambda v: 0 <= v < 1, "in [0, 1)")
    need("seed", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    if cfg.strategy == "multi_worker_mirrored":
        check_tf_config()
    if cfg.strategy == "tpu" and not cfg.tpu:
        raise ConfigError("--strategy=tpu needs --tpu (a TPU name or grpc:// address; 'local' for a TPU VM)")
    if cfg.dataset and cfg.image_folder:
        raise ConfigError("give either --dataset or --image_folder, not both")
    from ran_keras.tasks import check_task
    check_task(cfg.task)


def lr_step_epochs(cfg: TrainConfig) -> Tuple[int, ...]:
    """--lr_steps as increasing epochs (ConfigError naming the flag otherwise)."""
    try:
        epochs = tuple(int(v) for v in (cfg.lr_steps or "").split(",") if v.strip())
    except ValueError:
        epochs = ()
    if not epochs or list(epochs) != sorted(set(epochs)) or epochs[0] < 1:
        raise ConfigError(f"--lr_steps: --schedule=step needs increasing positive epochs separated by commas, "
                          f"e.g. 16,22; got {cfg.lr_steps!r}")
    return epochs


def check_tf_config() -> None:
    """A TF_CONFIG that MultiWorkerMirroredStrategy can use (unset: a cluster of this machine alone)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        addresses = cluster[task["type"]]
        count = len(addresses)
        ok = isinstance(task["index"], int) and 0 <= task["index"] < count
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"TF_CONFIG={text!r} is not a cluster description: --strategy=multi_worker_mirrored "
                          'needs JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": '
                          '"worker", "index": 0}} with this process\'s task among the cluster\'s')


def require_model_dir(cfg: TrainConfig) -> None:
    """A run writes everything to --model_dir: one without it is refused (before TensorFlow starts)."""
    if not cfg.model_dir:
        raise ConfigError("--model_dir is required (checkpoints, logs and the final model go there; "
                          "re-running with the same folder resumes)")


def model_spec(cfg: TrainConfig):
    """The spec --model names (a registered name or a spec .json file), before --width, --activation
    and --drop_path_rate (``ran_keras.tasks.classification.prepare_spec`` applies those). No TensorFlow."""
    from ran_keras.registry import resolve_spec
    if not cfg.model:
        raise ConfigError("--model is required: a registered model name (see `ran list`) or a spec .json file")
    return resolve_spec(cfg.model)
