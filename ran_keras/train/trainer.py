"""The training loop: tf.distribute, mixed precision, exact resume, NaN stop, logs, final export.

A custom loop (``strategy.run`` inside a ``tf.function``) rather than ``model.fit``, because it
needs three things fit does not give together: resuming mid-epoch on exactly the batches an
uninterrupted run would see (the input pipeline is seeded per epoch and per example, and a
resumed epoch skips what was consumed), extra loss terms over model weights that are logged
separately (the search's lambda * sum(alpha - 1)^2), and a stop on a non-finite loss that never
writes the bad weights to a checkpoint.

What a run writes to ``model_dir``::

    config.json            the resolved configuration (recipe + flags; image_size and steps_per_epoch
                           as used, also when they came from the model or the data)
    spec.json              the architecture trained (what resume checks against)
    checkpoints/ckpt-N     tf.train.Checkpoint of model, optimizer (slots, EMA) and step
    tensorboard/train|eval TensorBoard scalars
    metrics.csv            one row per epoch
    model.keras            the final model (float32, softmax), with model.spec.json beside it
    results.json           final metrics, params, MACs, history

The optimizer is built (slots created) before a checkpoint is restored, so its slots are restored
right away rather than deferred (see the toolchain notes); tests check the slot values.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ran_keras.data import classification
from ran_keras import fileio
from ran_keras.backend import keras, tf
from ran_keras.errors import RanError
from ran_keras.analysis.profiler import profile_spec
from ran_keras.train.config import ConfigError, TrainConfig, model_spec
from ran_keras.registry import create_model
from ran_keras.report import fmt_count
from ran_keras.spec import NetworkSpec, scale_width, with_activation, with_drop_path

LossFn = Callable[[Any], Any]


class NonFiniteLossError(RanError):
    """Training stopped because the loss or the gradients became NaN/Inf."""

    def __init__(self, message: str, step: int, checkpoint: Optional[str]):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


# --- devices, strategies, precision ------------------------------------------------------------

def configure_cpu_devices(count: int) -> None:
    """Split the first CPU into ``count`` logical devices (before TensorFlow initialises)."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise ConfigError(f"--num_cpu_devices={count}: TensorFlow has already started in this process, so its "
                          "devices can no longer be split; pass it on the command line (or call "
                          "configure_cpu_devices before any TensorFlow work)") from None


def make_strategy(cfg: TrainConfig):
    """The tf.distribute strategy named by ``cfg.strategy``."""
    if cfg.num_cpu_devices:
        configure_cpu_devices(cfg.num_cpu_devices)
    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if cfg.strategy == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=None if cfg.tpu == "local" else cfg.tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


# --- spec and optimiser --------------------------------------------------------------------------

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


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate after ``step`` updates: linear warm-up to ``peak``, then cosine to ``minimum``
    (or constant). Step 0 of a warm-up uses peak / warmup_steps (never 0), so the first update moves
    the weights. The one definition of the schedule: the optimizer uses it, and the logged rate is
    this schedule's value at the step just taken."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                 minimum: float = 0.0):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)
        self.schedule, self.minimum = schedule, float(minimum)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(1, self.warmup_steps)
        if self.schedule == "constant":
            after = tf.constant(self.peak)
        else:
            decay = float(max(1, self.total_steps - self.warmup_steps))
            progress = tf.clip_by_value((step - self.warmup_steps) / decay, 0.0, 1.0)
            after = self.minimum + (self.peak - self.minimum) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, after) if self.warmup_steps > 0 else after

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                    schedule=self.schedule, minimum=self.minimum)


def is_decayed(variable) -> bool:
    """Weight decay applies to conv/dense kernels only: never BN, biases or the AFRB alphas."""
    return len(variable.shape) >= 2


def make_optimizer(cfg: TrainConfig, schedule, variables: Sequence):
    decoupled = cfg.weight_decay_mode == "decoupled" and cfg.weight_decay > 0
    common = dict(learning_rate=schedule, use_ema=cfg.ema, ema_momentum=cfg.ema_decay,
                  ema_overwrite_frequency=None, jit_compile=cfg.xla,
                  weight_decay=cfg.weight_decay if decoupled else None)
    if cfg.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(rho=cfg.rho, momentum=cfg.momentum, epsilon=cfg.epsilon, **common)
    elif cfg.optimizer == "adamw":
        common["weight_decay"] = cfg.weight_decay if decoupled else 0.0
        opt = keras.optimizers.AdamW(beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon, **common)
    elif cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon, **common)
    else:
        opt = keras.optimizers.SGD(momentum=cfg.momentum, **common)
    if decoupled or cfg.optimizer == "adamw":
        opt.exclude_from_weight_decay(var_list=[v for v in variables if not is_decayed(v)])
    if cfg.dtype == "float16":
        opt = keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


# --- callbacks and results ---------------------------------------------------------------------

class Callback:
    """Hooks into the loop. ``trainer`` exposes model, optimizer, strategy, spec, cfg, model_dir."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, logs: Dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Dict[str, float]) -> None: ...

    def on_train_end(self, trainer: "Trainer", stopped: Optional[str]) -> None: ...


@dataclass
class RunResult:
    model_dir: str
    spec: NetworkSpec
    steps: int
    total_steps: int
    epochs: int
    final: Dict[str, float]
    history: List[Dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    model_path: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"model_dir": self.model_dir, "model": self.spec.name, "steps": self.steps,
                "total_steps": self.total_steps, "epochs": self.epochs, "final": self.final,
                "resumed_from": self.resumed_from, "model_path": self.model_path, "history": self.history}


CSV_COLUMNS = ("epoch", "step", "learning_rate", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy",
               "eval_top5", "seconds")

#: settings that must not change when a run is resumed (they fix the data order and the schedule);
#: image_size and steps_per_epoch are compared as resolved (from the flag, else the model / the data)
RESUME_FIXED = ("batch_size", "dataset", "image_folder", "image_size", "seed", "shuffle_buffer", "steps_per_epoch",
                "train_split", "validation_fraction")
RESOLVED = ("image_size", "steps_per_epoch")


# --- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """One training run. ``extra_losses`` maps a name to ``fn(model) -> scalar`` added to the loss."""

    def __init__(self, cfg: TrainConfig, spec: Optional[NetworkSpec] = None, *,
                 extra_losses: Optional[Mapping[str, LossFn]] = None,
                 callbacks: Sequence[Callback] = (), log: Callable[[str], None] = print):
        if not cfg.model_dir:
            raise ConfigError("--model_dir is required (checkpoints, logs and the final model go there; "
                              "re-running with the same folder resumes)")
        self.cfg = cfg
        self.spec = prepare_spec(cfg, spec)
        self.extra_losses = dict(extra_losses or {})
        self.callbacks = list(callbacks)
        self.log = log
        self.model_dir = Path(cfg.model_dir)
        self.step = 0

    # -- set-up --

    def _setup(self):
        cfg = self.cfg
        self.strategy = make_strategy(cfg)
        self.replicas = self.strategy.num_replicas_in_sync
        if cfg.batch_size % self.replicas:
            raise ConfigError(f"--batch_size={cfg.batch_size} is not divisible by the {self.replicas} replicas of "
                              f"the {cfg.strategy} strategy; the batch size is global (each replica gets "
                              f"batch_size / replicas), so use a multiple of {self.replicas}")
        self.chief = is_chief(self.strategy)
        self.source = classification.load_source(cfg)
        classes = cfg.classes or self.source.num_classes
        if classes < self.source.num_classes:
            raise ConfigError(f"--classes={classes} is smaller than the {self.source.num_classes} classes of "
                              f"{self.source.name}")
        self.classes = classes
        self.image_size = cfg.image_size or self.spec.input_size
        self.input_shape = (self.image_size, self.image_size, self.spec.input_channels)
        self.spec.check_input_shape(self.input_shape)
        self.pipeline = classification.Pipeline(self.source, cfg, image_size=self.image_size,
                                          channels=self.spec.input_channels, mean=self.spec.input_mean,
                                          std=self.spec.input_std, num_classes=classes,
                                          global_batch=cfg.batch_size)
        if cfg.steps_per_epoch:
            self.steps_per_epoch = cfg.steps_per_epoch
        elif self.source.train_examples is None:
            raise ConfigError(f"{self.source.name} does not say how many training examples it has; pass "
                              "--steps_per_epoch")
        else:
            self.steps_per_epoch = self.source.train_examples // cfg.batch_size
            if self.steps_per_epoch < 1:
                raise ConfigError(f"{self.source.name} has {self.source.train_examples} training examples, fewer "
                                  f"than one global batch of {cfg.batch_size}; lower --batch_size")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.peak_lr = cfg.peak_learning_rate()
        warmup = min(self.total_steps, int(round(cfg.warmup_epochs * self.steps_per_epoch)))
        self.schedule = WarmupSchedule(self.peak_lr, warmup, self.total_steps, cfg.schedule, cfg.min_learning_rate)
        self.warmup_steps = warmup

    def _check_model_dir(self):
        resolved = self.cfg.replace(image_size=self.image_size, steps_per_epoch=self.steps_per_epoch)
        spec_path = self.model_dir / "spec.json"
        cfg_path = self.model_dir / "config.json"
        if spec_path.is_file() and (self.model_dir / "checkpoints").is_dir():
            old = json.loads(spec_path.read_text(encoding="utf-8"))
            if old != self.spec.to_dict():
                raise ConfigError(f"--model_dir={self.model_dir} holds a run of a different architecture "
                                  f"({old.get('name')!r}, see its spec.json); use a new --model_dir to train "
                                  f"{self.spec.name!r}")
            if cfg_path.is_file():
                before = json.loads(cfg_path.read_text(encoding="utf-8"))
                for key in RESUME_FIXED:
                    was, now = before.get(key), getattr(resolved, key)
                    if key not in before or was == now or (key in RESOLVED and was is None):
                        continue   # (None under RESOLVED: a config.json written before they were resolved)
                    how = (" (as resolved from the flag, else the model or the data)" if key in RESOLVED else "")
                    raise ConfigError(f"cannot resume {self.model_dir}: --{key} was {was!r}, now {now!r}{how}; "
                                      f"use the same value or a new --model_dir")
        if self.chief:
            fileio.write_text(cfg_path, resolved.to_json())
            fileio.write_text(spec_path, self.spec.to_json())

    def _build(self):
        cfg = self.cfg
        keras.utils.set_random_seed(cfg.seed)   # dropout / drop-path masks, from the start of a run
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.mixed_precision.set_global_policy(_POLICIES[cfg.dtype])
        with self.strategy.scope():
            self.model = create_model(self.spec, self.input_shape, classes=self.classes,
                                      classifier_activation=None, seed=cfg.seed)
            tvars = self.model.trainable_variables
            self.optimizer = make_optimizer(cfg, self.schedule, tvars)
            self.optimizer.build(tvars)   # slots exist before restore, so they are restored, not deferred
            self.train_loss = keras.metrics.Mean("train_loss")
            self.train_acc = keras.metrics.CategoricalAccuracy("train_accuracy")
            self.eval_loss = keras.metrics.Mean("eval_loss")
            self.eval_acc = keras.metrics.CategoricalAccuracy("eval_accuracy")
            self.eval_top5 = keras.metrics.TopKCategoricalAccuracy(min(5, self.classes), "eval_top5")
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step_var)
        ckpt_dir = self.model_dir / "checkpoints"
        if not self.chief:
            ckpt_dir = self.model_dir / f".worker_{self.strategy.cluster_resolver.task_id}"
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(ckpt_dir), max_to_keep=cfg.keep_checkpoints,
                                                  checkpoint_name="ckpt")
        self.decay_vars = [v for v in tvars if is_decayed(v)] if (
            cfg.weight_decay > 0 and cfg.weight_decay_mode == "l2") else []

    def _restore(self) -> int:
        latest = self.manager.latest_checkpoint
        if not latest:
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise ConfigError(f"cannot resume from {latest}: it does not match this model/optimizer "
                              f"({str(err).splitlines()[0][:200]}); use a new --model_dir") from None
        return int(self.step_var.numpy())

    # -- steps --

    def _make_steps(self):
        cfg, model, opt, strategy = self.cfg, self.model, self.optimizer, self.strategy
        smooth = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing,
                                                      reduction=keras.losses.Reduction.NONE)
        plain = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=keras.losses.Reduction.NONE)
        batch = cfg.batch_size
        f16 = cfg.dtype == "float16"
        extra = self.extra_losses
        decay_vars = self.decay_vars
        wd = cfg.weight_decay
        clip = cfg.clip_grad_norm

        def forward_backward(images, labels):
            tvars = model.trainable_variables
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                per_example = smooth(labels, logits)
                ce = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
                terms = {name: tf.cast(fn(model), tf.float32) for name, fn in extra.items()}
                if decay_vars:
                    terms["weight_decay"] = wd * 0.5 * tf.add_n(
                        [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in decay_vars])
                if model.losses:
                    terms["model_losses"] = tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
                total = ce + (tf.nn.scale_regularization_loss(tf.add_n(list(terms.values()))) if terms else 0.0)
                scaled = opt.get_scaled_loss(total) if f16 else total
            grads = tape.gradient(scaled, tvars)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, tvars)]
            return grads, logits, per_example, ce, total, terms

        if cfg.xla:
            forward_backward = tf.function(forward_backward, jit_compile=True)

        def replica_step(images, labels):
            grads, logits, per_example, ce, total, terms = forward_backward(images, labels)
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            if f16:
                grads = opt.get_unscaled_gradients(grads)
            norm = tf.linalg.global_norm(grads)
            if clip:
                grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=norm)
            opt.apply_gradients(zip(grads, model.trainable_variables), skip_gradients_aggregation=True)
            self.train_loss.update_state(per_example)
            self.train_acc.update_state(labels, logits)
            n = tf.cast(self.replicas, tf.float32)
            out = {"loss": total, "ce": ce, "grad_norm": norm / n}
            out.update({k: v / n for k, v in terms.items()})
            return out

        @tf.function
        def train_step(images, labels):
            per_replica = strategy.run(replica_step, args=(images, labels))
            self.step_var.assign_add(1)
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        def replica_eval(images, labels):
            logits = tf.cast(model(images, training=False), tf.float32)
            self.eval_loss.update_state(plain(labels, logits))
            self.eval_acc.update_state(labels, logits)
            self.eval_top5.update_state(labels, logits)

        @tf.function(reduce_retracing=True)
        def eval_step(images, labels):
            strategy.run(replica_eval, args=(images, labels))

        @tf.function
        def weights_finite():
            return tf.reduce_all([tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float32)))
                                  for v in model.variables])

        self.train_step, self.eval_step, self.weights_finite = train_step, eval_step, weights_finite

    # -- loop --

    def evaluate(self) -> Dict[str, float]:
        for m in (self.eval_loss, self.eval_acc, self.eval_top5):
            m.reset_state()
        for images, labels in self.strategy.experimental_distribute_dataset(self.pipeline.eval()):
            self.eval_step(images, labels)
        return {"eval_loss": float(self.eval_loss.result()), "eval_accuracy": float(self.eval_acc.result()),
                "eval_top5": float(self.eval_top5.result())}

    def _save(self, step: int) -> None:
        if not bool(self.weights_finite()):
            self._nonfinite(step, "weights")
        self.manager.save(checkpoint_number=step)

    def _nonfinite(self, step: int, what: str, value: Optional[float] = None):
        latest = self.manager.latest_checkpoint
        where = (f"the last good checkpoint is {latest} (step {latest.rsplit('-', 1)[-1]})" if latest
                 else "no checkpoint had been written yet")
        shown = f" ({value})" if value is not None else ""
        msg = (f"non-finite {what}{shown} at step {step}: training stopped and the weights of this step were not "
               f"saved; {where}. Lower --learning_rate, set --clip_grad_norm, or check the input data.")
        raise NonFiniteLossError(msg, step, latest)

    def _write_csv(self, rows: List[Dict[str, Any]]) -> None:
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
        fileio.write_text(self.model_dir / "metrics.csv", buf.getvalue())

    def _read_csv(self, upto_epoch: int) -> List[Dict[str, Any]]:
        """The rows of metrics.csv for epochs 1..upto_epoch (what a resumed run keeps)."""
        path = self.model_dir / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for r in rows:
            try:
                row = {k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k in CSV_COLUMNS}
                row["epoch"], row["step"] = int(row["epoch"]), int(row["step"])
            except (KeyError, TypeError, ValueError):
                continue
            if row["epoch"] <= upto_epoch:
                out.append(row)
        return out

    def _describe(self, start: int) -> None:
        cfg, log = self.cfg, self.log
        prof = profile_spec(self.spec, self.input_shape, classes=self.classes)
        try:
            devices = ", ".join(sorted({d.rsplit("device:", 1)[-1] for d in self.strategy.extended.worker_devices}))
        except RuntimeError:   # the default strategy
            devices = "the default device"
        log(f"model {self.spec.name}: {fmt_count(prof.params)} params, {fmt_count(prof.macs)} MACs at "
            f"{self.image_size}x{self.image_size}, {self.classes} classes, dtype {cfg.dtype}"
            + (", XLA" if cfg.xla else ""))
        log(f"data {self.source.description}; {self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs = "
            f"{self.total_steps} steps")
        log(f"strategy {cfg.strategy}: {self.replicas} replica(s) on {devices}; global batch {cfg.batch_size} = "
            f"{self.replicas} x {cfg.batch_size // self.replicas} per replica")
        scaling = (f"{cfg.learning_rate:g} per {cfg.lr_reference_batch} x {cfg.batch_size}/{cfg.lr_reference_batch}"
                   if cfg.lr_scaling else "unscaled")
        log(f"optimizer {cfg.optimizer}, peak lr {self.peak_lr:.4g} ({scaling}), {cfg.schedule} after "
            f"{self.warmup_steps} warm-up steps; weight decay {cfg.weight_decay:g} ({cfg.weight_decay_mode}); "
            f"label smoothing {cfg.label_smoothing:g}; augment {cfg.augment}; mixup {cfg.mixup:g} cutmix "
            f"{cfg.cutmix:g}; EMA {'%g' % cfg.ema_decay if cfg.ema else 'off'}")
        if start:
            log(f"resumed from {self.manager.latest_checkpoint} at step {start} (epoch {start // self.steps_per_epoch}"
                f" + {start % self.steps_per_epoch} steps)")

    def run(self) -> RunResult:
        """Train (or resume) to the configured number of epochs; returns the final metrics."""
        cfg = self.cfg
        self._setup()
        self._check_model_dir()
        try:
            self._build()
            start = self._restore()
            self.step = start
            self._describe(start)
            self._make_steps()
            return self._loop(start)
        finally:
            keras.mixed_precision.set_global_policy("float32")

    def _loop(self, start: int) -> RunResult:
        cfg, log = self.cfg, self.log
        writers = {}
        if self.chief:
            writers = {k: tf.summary.create_file_writer(str(self.model_dir / "tensorboard" / k))
                       for k in ("train", "eval")}
        self.train_writer, self.eval_writer = writers.get("train"), writers.get("eval")
        history = self._read_csv(start // self.steps_per_epoch)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        stopped: Optional[str] = None
        ckpt_every = cfg.checkpoint_every or self.steps_per_epoch
        try:
            step = start
            first_epoch = start // self.steps_per_epoch
            for epoch in range(first_epoch, cfg.epochs):
                skip = (step - epoch * self.steps_per_epoch) * cfg.batch_size
                self.train_loss.reset_state()
                self.train_acc.reset_state()
                t0, seen = time.time(), 0
                dist = self.strategy.experimental_distribute_dataset(self.pipeline.train(epoch, skip))
                for images, labels in dist:
                    out = self.train_step(images, labels)
                    step += 1
                    self.step = step
                    logs = {k: float(v) for k, v in out.items()}
                    seen += cfg.batch_size
                    for key in ("loss", "grad_norm"):
                        if not math.isfinite(logs[key]) and not (key == "grad_norm" and cfg.dtype == "float16"):
                            self._nonfinite(step, "loss" if key == "loss" else "gradient norm", logs[key])
                    logs["learning_rate"] = float(self.schedule(step - 1))   # the rate this step used
                    if step % ckpt_every == 0 or step == self.total_steps:
                        self._save(step)
                    if step % cfg.log_every == 0 or step == self.total_steps:
                        self._log_step(step, epoch, logs, seen / max(time.time() - t0, 1e-9))
                    for cb in self.callbacks:
                        cb.on_step_end(self, step, logs)
                    if step >= (epoch + 1) * self.steps_per_epoch:
                        break
                row = {"epoch": epoch + 1, "step": step, "learning_rate": logs["learning_rate"],
                       "train_loss": float(self.train_loss.result()),
                       "train_accuracy": float(self.train_acc.result()), "seconds": round(time.time() - t0, 2)}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    row.update(self.evaluate())
                history.append(row)
                self._log_epoch(row)
                if self.chief:
                    self._write_csv(history)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch + 1, row)
            if start >= self.total_steps:
                log(f"{self.model_dir} is already trained to step {start}; exporting the final model again")
            return self._finish(start, history)
        except NonFiniteLossError as err:
            stopped = str(err)
            raise
        except BaseException as err:  # noqa: B036 - report and re-raise (KeyboardInterrupt included)
            stopped = f"{type(err).__name__}: {err}"
            raise
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self, stopped)
            for w in writers.values():
                w.flush()

    def _log_step(self, step: int, epoch: int, logs: Dict[str, float], rate: float) -> None:
        extras = " ".join(f"{k} {v:.4g}" for k, v in logs.items() if k not in ("loss", "learning_rate"))
        self.log(f"step {step}/{self.total_steps} (epoch {epoch + 1}/{self.cfg.epochs}) loss {logs['loss']:.4f} "
                 f"{extras} lr {logs['learning_rate']:.3g} | {rate:.0f} img/s")
        if self.train_writer is not None:
            with self.train_writer.as_default(step=step):
                for k, v in logs.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("accuracy", float(self.train_acc.result()))

    def _log_epoch(self, row: Dict[str, Any]) -> None:
        def f(key, pct=False):
            v = row.get(key)
            return "-" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.4f}")
        self.log(f"epoch {row['epoch']}/{self.cfg.epochs} step {row['step']}: train loss {f('train_loss')} acc "
                 f"{f('train_accuracy', True)} | eval loss {f('eval_loss')} acc {f('eval_accuracy', True)} top5 "
                 f"{f('eval_top5', True)} | {row['seconds']}s")
        if self.chief:
            with self.eval_writer.as_default(step=row["step"]):
                for key in ("eval_loss", "eval_accuracy", "eval_top5"):
                    if row.get(key) is not None:
                        tf.summary.scalar(key.replace("eval_", "epoch_"), row[key])
            if self.train_writer is not None and row.get("train_loss") is not None:
                with self.train_writer.as_default(step=row["step"]):
                    tf.summary.scalar("epoch_loss", row["train_loss"])
                    tf.summary.scalar("epoch_accuracy", row["train_accuracy"])

    def _finish(self, start: int, history: List[Dict[str, Any]]) -> RunResult:
        cfg = self.cfg
        if self.manager.latest_checkpoint is None or int(self.step_var.numpy()) != self._latest_step():
            self._save(int(self.step_var.numpy()))
        final = {}
        if cfg.ema:
            with self.strategy.scope():
                opt = getattr(self.optimizer, "inner_optimizer", self.optimizer)
                opt.finalize_variable_values(self.model.trainable_variables)
            self.log("final weights: the exponential moving average (EMA)")
        if cfg.ema or not history or history[-1].get("eval_accuracy") is None:
            final = self.evaluate()
        else:
            final = {k: history[-1][k] for k in ("eval_loss", "eval_accuracy", "eval_top5")}
        result = RunResult(str(self.model_dir), self.spec, int(self.step_var.numpy()), self.total_steps, cfg.epochs,
                           final, history, start)
        if self.chief:
            result.model_path = str(self.export())
            prof = profile_spec(self.spec, self.input_shape, classes=self.classes)
            record = dict(result.to_dict(), params=prof.params, macs=prof.macs, image_size=self.image_size,
                          classes=self.classes, dataset=self.source.name, global_batch=cfg.batch_size,
                          replicas=self.replicas)
            fileio.write_text(self.model_dir / "results.json", json.dumps(record, indent=1) + "\n")
        self.log(f"done: step {result.steps}, held-out accuracy {100 * final.get('eval_accuracy', float('nan')):.2f}%"
                 f" (loss {final.get('eval_loss', float('nan')):.4f}); model {result.model_path}")
        return result

    def _latest_step(self) -> int:
        latest = self.manager.latest_checkpoint
        return int(latest.rsplit("-", 1)[-1]) if latest else -1

    def export(self) -> Path:
        """Save the trained weights as a float32 softmax model (``model.keras``) plus its spec."""
        keras.mixed_precision.set_global_policy("float32")
        final = create_model(self.spec, self.input_shape, classes=self.classes, seed=self.cfg.seed)
        final.set_weights(self.model.get_weights())
        path = self.model_dir / "model.keras"
        with fileio.atomic_path(path, suffix=".keras") as tmp:
            final.save(tmp)
        self.spec.save(self.model_dir / "model.spec.json")
        return path


def train(cfg: TrainConfig, spec: Optional[NetworkSpec] = None, **kwargs) -> RunResult:
    """Run (or resume) training as configured; see ``Trainer``."""
    return Trainer(cfg, spec, **kwargs).run()
