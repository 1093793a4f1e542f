"""The training loop: tf.distribute, mixed precision, exact resume, NaN stop, logs, final export.

Task-agnostic: a ``Task`` (``ran_keras.tasks``) supplies the model, the data, the losses, the
metrics and the final artefact; ``ModelTransform`` objects (``ran_keras.train.transforms``) change
the model after it is built (QAT) or add loss terms over its weights (the search's penalty).

A custom loop (``strategy.run`` inside a ``tf.function``) rather than ``model.fit``, because it
needs three things fit does not give together: resuming mid-epoch on exactly the batches an
uninterrupted run would see (the task's inputs are seeded per epoch and per example, and a
resumed epoch skips what was consumed), extra loss terms over model weights that are logged
separately, and a stop on a non-finite loss that never writes the bad weights to a checkpoint.

What a run writes to ``model_dir``::

    config.json            the resolved configuration (recipe + flags; steps_per_epoch and what the
                           task resolved, e.g. image_size, as used)
    spec.json              the task's fingerprint, e.g. the architecture (what resume checks against)
    checkpoints/ckpt-N     tf.train.Checkpoint of model, optimizer (slots, EMA), step and the running
                           train metrics of the epoch
    tensorboard/train|eval TensorBoard scalars
    metrics.csv            one row per epoch: train_<metric>, eval_<metric> for the task's metrics
    model.keras ...        the task's export (classification: float32 softmax + model.spec.json),
                           then each transform's
    results.json           final metrics, history, the task's fields (params, MACs, ...)
    .lock                  held while a run writes here (``ran_keras.runlock``)

The optimizer is built (slots created) before a checkpoint is restored, so its slots are restored
right away rather than deferred (see the toolchain notes); tests check the slot values. A resume
starts from the newest checkpoint that reads back whole (``train.checkpoints``), draws the same
dropout masks (``train.seeds``) and cuts the logs back to its step (``train.events``). On a
cluster (multi_worker_mirrored) every worker runs every collective (steps, metric reads, saves,
the final weight read) and only the chief writes ``model_dir``.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ran_keras import fileio
from ran_keras.backend import keras, tf
from ran_keras.errors import RanError
from ran_keras.runlock import FolderLock
from ran_keras.tasks.base import Task, TaskError
from ran_keras.train import checkpoints
from ran_keras.train.config import (ConfigError, TrainConfig, check_tf_config, lr_step_epochs,
                                    require_model_dir)
from ran_keras.train.events import truncate_events
from ran_keras.train.seeds import bind_step_seeds
from ran_keras.train.transforms import ModelTransform


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
        check_tf_config()
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


def cluster_tasks(strategy) -> List[Tuple[str, int, str]]:
    """(job, index, address) of every task of the strategy's cluster; [] on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None and resolver.task_type else {}
    return [(job, i, addr) for job, addrs in sorted(cluster.items())
            for i, addr in (addrs.items() if isinstance(addrs, dict) else enumerate(addrs))]


def describe_cluster(strategy) -> str:
    """`` of each task in a cluster of 2 (worker 0 at host:port, ...); this is worker 1`` ('' on one machine)."""
    tasks = cluster_tasks(strategy)
    if not tasks:
        return ""
    resolver = strategy.cluster_resolver
    names = ", ".join(f"{job} {i} at {addr}" for job, i, addr in tasks)
    role = " (the chief: it writes the run folder)" if is_chief(strategy) else ""
    return (f" of each task in a cluster of {len(tasks)} ({names}); this is {resolver.task_type} "
            f"{resolver.task_id}{role}")


_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


# --- optimiser ------------------------------------------------------------------------------

class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate after ``step`` updates: linear warm-up to ``peak``, then cosine to ``minimum``
    (or constant). Step 0 of a warm-up uses peak / warmup_steps (never 0), so the first update moves
    the weights. The one definition of the schedule: the optimizer uses it, and the logged rate is
    this schedule's value at the step just taken."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                 minimum: float = 0.0, boundaries: Sequence[int] = (), decay: float = 0.1):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)
        self.schedule, self.minimum = schedule, float(minimum)
        self.boundaries, self.decay = tuple(int(b) for b in boundaries), float(decay)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(1, self.warmup_steps)
        if self.schedule == "constant":
            after = tf.constant(self.peak)
        elif self.schedule == "step":   # x decay at each boundary step (torchvision's MultiStepLR)
            passed = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries or (2 ** 62,), tf.float32), tf.float32))
            after = self.peak * tf.pow(self.decay, passed)
        else:
            decay = float(max(1, self.total_steps - self.warmup_steps))
            progress = tf.clip_by_value((step - self.warmup_steps) / decay, 0.0, 1.0)
            after = self.minimum + (self.peak - self.minimum) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, after) if self.warmup_steps > 0 else after

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                    schedule=self.schedule, minimum=self.minimum, boundaries=self.boundaries, decay=self.decay)


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
    """Hooks into the loop. ``trainer`` exposes cfg, task, model, optimizer, strategy, model_dir, step,
    steps_per_epoch and train_writer."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, logs: Dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: Dict[str, float]) -> None: ...

    def on_train_end(self, trainer: "Trainer", stopped: Optional[str]) -> None: ...

    def before_checkpoint(self, trainer: "Trainer", step: int) -> None:
        """Make what was logged up to ``step`` durable: a resumed run keeps the logs up to its checkpoint."""


@dataclass
class RunResult:
    model_dir: str
    model: str
    steps: int
    total_steps: int
    epochs: int
    final: Dict[str, float]
    history: List[Dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    model_path: Optional[str] = None
    chief: bool = True   # False on a non-chief worker of a cluster, which writes no outputs

    def to_dict(self) -> Dict[str, Any]:
        return {"model_dir": self.model_dir, "model": self.model, "steps": self.steps,
                "total_steps": self.total_steps, "epochs": self.epochs, "final": self.final,
                "resumed_from": self.resumed_from, "model_path": self.model_path, "history": self.history}


#: settings that must not change when a run is resumed (they fix the data order and the learning-rate schedule,
#: which a changed value would bend mid-run while config.json claimed it for the whole run);
#: steps_per_epoch and what the task resolves (image_size) are compared as resolved
RESUME_FIXED = ("batch_size", "dataset", "image_folder", "image_size", "seed", "shuffle_buffer", "steps_per_epoch",
                "train_split", "validation_fraction", "epochs", "learning_rate", "lr_reference_batch", "lr_scaling",
                "schedule", "warmup_epochs", "min_learning_rate")
#: the loop's own metric, before the task's: the mean of the task's loss over the examples seen
LOSS = "loss"


# --- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """One training run of ``task``, its model changed by ``transforms`` (in order)."""

    def __init__(self, cfg: TrainConfig, task: Task, transforms: Sequence[ModelTransform] = (),
                 callbacks: Sequence[Callback] = (), log: Callable[[str], None] = print):
        require_model_dir(cfg)
        self.cfg, self.task = cfg, task
        self.transforms = list(transforms)
        self.callbacks = list(callbacks)
        self.log = log
        self.model_dir = Path(cfg.model_dir)
        self.step = 0
        self.train_writer = self.eval_writer = None
        self.saved: Tuple[int, Optional[str]] = (-1, None)   # (step, path) of the newest good checkpoint
        self.scratch: Optional[str] = None                   # a non-chief worker's checkpoint folder

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
        self.task.setup(self.strategy)
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.peak_lr = cfg.peak_learning_rate()
        warmup = min(self.total_steps, int(round(cfg.warmup_epochs * self.steps_per_epoch)))
        boundaries = ([e * self.steps_per_epoch for e in lr_step_epochs(cfg)] if cfg.schedule == "step" else [])
        self.schedule = WarmupSchedule(self.peak_lr, warmup, self.total_steps, cfg.schedule, cfg.min_learning_rate,
                                       boundaries, cfg.lr_decay)
        self.warmup_steps = warmup

    def _steps_per_epoch(self) -> int:
        cfg, examples, name = self.cfg, self.task.train_examples, self.task.data_name
        if cfg.steps_per_epoch:
            return cfg.steps_per_epoch
        if examples is None:
            raise ConfigError(f"{name} does not say how many training examples it has; pass --steps_per_epoch")
        if examples < cfg.batch_size:
            raise ConfigError(f"{name} has {examples} training examples, fewer than one global batch of "
                              f"{cfg.batch_size}; lower --batch_size")
        return examples // cfg.batch_size

    def _check_model_dir(self):
        resolved_keys = {**self.task.resolved(), "steps_per_epoch": self.steps_per_epoch}
        resolved = self.cfg.replace(**resolved_keys)
        fingerprint = json.loads(json.dumps(self.task.fingerprint()))
        spec_path = self.model_dir / "spec.json"
        cfg_path = self.model_dir / "config.json"
        if spec_path.is_file() and (self.model_dir / "checkpoints").is_dir():
            old = json.loads(spec_path.read_text(encoding="utf-8"))
            if old != fingerprint:
                raise ConfigError(f"--model_dir={self.model_dir} holds a run of a different architecture "
                                  f"({old.get('name')!r}, see its spec.json); use a new --model_dir to train "
                                  f"{self.task.model_name!r}")
            if cfg_path.is_file():
                self._check_resume_settings(json.loads(cfg_path.read_text(encoding="utf-8")), resolved,
                                            resolved_keys)
        if self.chief:
            fileio.write_text(cfg_path, resolved.to_json())
            fileio.write_json(spec_path, fingerprint)

    def _check_resume_settings(self, before: Dict[str, Any], resolved: TrainConfig, resolved_keys) -> None:
        for key in RESUME_FIXED:
            was, now = before.get(key), getattr(resolved, key)
            if key not in before or was == now or (key in resolved_keys and was is None):
                continue   # (None for a resolved key: a config.json written before it was resolved)
            how = " (as resolved from the flag, else the model or the data)" if key in resolved_keys else ""
            raise ConfigError(f"cannot resume {self.model_dir}: --{key} was {was!r}, now {now!r}{how}; "
                              f"use the same value or a new --model_dir")

    def _build(self):
        cfg = self.cfg
        keras.utils.set_random_seed(cfg.seed)   # any randomness not seeded otherwise
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.mixed_precision.set_global_policy(_POLICIES[cfg.dtype])
        with self.strategy.scope():
            model = self.task.build_model()
            for transform in self.transforms:
                model = transform.apply(model)
            self.model = model
            tvars = model.trainable_variables
            self.optimizer = make_optimizer(cfg, self.schedule, tvars)
            self.optimizer.build(tvars)   # slots exist before restore, so they are restored, not deferred
            self.train_metrics = [keras.metrics.Mean(LOSS)] + list(self.task.build_metrics(True))
            self.eval_metrics = [keras.metrics.Mean(LOSS)] + list(self.task.build_metrics(False))
        self._check_names()
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        bind_step_seeds(self.model, self.step_var, cfg.seed)   # dropout / drop-path masks: exact on resume
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step_var,
                                              train_metrics=self.train_metrics)
        self.ckpt_dir = self.model_dir / "checkpoints"
        save_dir = self.ckpt_dir
        if not self.chief:   # every worker saves (saving reads synced values together); only the chief's are kept
            self.scratch = tempfile.mkdtemp(prefix=f"ran_worker{self.strategy.cluster_resolver.task_id}_")
            save_dir = Path(self.scratch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(save_dir), max_to_keep=cfg.keep_checkpoints,
                                                  checkpoint_name="ckpt")
        self.decay_vars = [v for v in tvars if is_decayed(v)] if (
            cfg.weight_decay > 0 and cfg.weight_decay_mode == "l2") else []

    def _check_names(self) -> None:
        for metrics in (self.train_metrics, self.eval_metrics):
            names = [m.name for m in metrics]
            if len(set(names)) != len(names):
                raise TaskError(f"task {self.task.name!r}: metric names must be unique and not {LOSS!r} (the "
                                f"loop's), got {', '.join(names[1:])}")
        names = [t.name for t in self.transforms]
        if len(set(names)) != len(names):
            raise TaskError(f"transform names must be unique, got {', '.join(names)}")

    def _restore(self) -> int:
        """The step of the newest intact checkpoint of the run (every worker reads the chief's), restored."""
        try:
            found = checkpoints.newest_intact(self.ckpt_dir, self.log)
        except RuntimeError as err:
            raise ConfigError(f"cannot resume {self.model_dir}: no checkpoint in {self.ckpt_dir} reads back whole "
                              f"({err}); nothing can be resumed from them: move that folder away to train from "
                              f"step 0 in this --model_dir, or use a new --model_dir") from None
        if found is None:
            return 0
        _, latest = found
        core = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step_var)
        try:
            core.restore(latest).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise ConfigError(f"cannot resume from {latest}: it was written for another model or optimizer than "
                              f"these settings build ({str(err).splitlines()[0][:200]}); resume it with the "
                              f"settings it was trained with (its config.json), or train these in a new "
                              f"--model_dir") from None
        if any(name.startswith("train_metrics/") for name, _ in tf.train.list_variables(latest)):
            tf.train.Checkpoint(train_metrics=self.train_metrics).restore(latest).expect_partial()
        self.saved = (int(self.step_var.numpy()), latest)
        return self.saved[0]

    # -- steps --

    def _regularizers(self) -> Dict[str, Any]:
        """Loss terms over the weights: transforms', L2 weight decay, the model's own losses."""
        model, terms = self.model, {}
        for transform in self.transforms:
            term = transform.loss(model)
            if term is not None:
                terms[transform.name] = tf.cast(term, tf.float32)
        if self.decay_vars:
            terms["weight_decay"] = self.cfg.weight_decay * 0.5 * tf.add_n(
                [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in self.decay_vars])
        if model.losses:
            terms["model_losses"] = tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
        return terms

    def _update_loss(self, metric, loss, features) -> None:
        """Mean over examples of a loss given as this replica's share of the global batch's mean."""
        examples = tf.cast(tf.shape(tf.nest.flatten(features)[0])[0], tf.float32)
        metric.update_state(tf.math.divide_no_nan(loss * self.cfg.batch_size, examples), sample_weight=examples)

    def _make_steps(self):
        cfg, task, model, opt, strategy = self.cfg, self.task, self.model, self.optimizer, self.strategy
        f16 = cfg.dtype == "float16"
        clip = cfg.clip_grad_norm
        replicas = float(self.replicas)

        def forward_backward(features, labels):
            tvars = model.trainable_variables
            with tf.GradientTape() as tape:
                outputs = task.forward(model, features, labels, training=True)
                loss, logged = task.build_losses(labels, outputs, model, training=True)
                regs = self._regularizers()
                clash = (set(logged) & set(regs)) | ({LOSS, "grad_norm"} & (set(logged) | set(regs)))
                if clash:
                    raise TaskError(f"log names used twice (task terms, transforms, loop): {', '.join(sorted(clash))}")
                total = loss + (tf.nn.scale_regularization_loss(tf.add_n(list(regs.values()))) if regs else 0.0)
                scaled = opt.get_scaled_loss(total) if f16 else total
            grads = tape.gradient(scaled, tvars)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, tvars)]
            return grads, outputs, loss, total, logged, regs

        if cfg.xla:
            forward_backward = tf.function(forward_backward, jit_compile=True)

        def replica_step(features, labels):
            grads, outputs, loss, total, logged, regs = forward_backward(features, labels)
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            if f16:
                grads = opt.get_unscaled_gradients(grads)
            norm = tf.linalg.global_norm(grads)
            if clip:
                grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=norm)
            opt.apply_gradients(zip(grads, model.trainable_variables), skip_gradients_aggregation=True)
            self._update_loss(self.train_metrics[0], loss, features)
            task.process_metrics(self.train_metrics[1:], labels, outputs)
            out = {LOSS: total, **logged, "grad_norm": norm / replicas}
            out.update({k: v / replicas for k, v in regs.items()})
            return out

        @tf.function(reduce_retracing=True)   # detection batches vary in image and box-list size
        def train_step(features, labels):
            per_replica = strategy.run(replica_step, args=(features, labels))
            self.step_var.assign_add(1)
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        aggregates = task.aggregates

        def replica_eval(features, labels):
            outputs = task.forward(model, features, labels, training=False)
            loss, _ = task.build_losses(labels, outputs, model, training=False)
            self._update_loss(self.eval_metrics[0], loss, features)
            task.process_metrics(self.eval_metrics[1:], labels, outputs)
            return (labels, outputs) if aggregates else None

        @tf.function(reduce_retracing=True)
        def eval_step(features, labels):
            result = strategy.run(replica_eval, args=(features, labels))
            if aggregates:
                return tf.nest.map_structure(lambda v: strategy.gather(v, axis=0), result)
            return None

        @tf.function
        def weights_finite():
            return tf.reduce_all([tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float32)))
                                  for v in model.variables])

        self.train_step, self.eval_step, self.weights_finite = train_step, eval_step, weights_finite

    # -- loop --

    def evaluate(self) -> Dict[str, float]:
        """One pass over the task's evaluation inputs: ``eval_<metric>`` values (aggregated ones too)."""
        task = self.task
        for m in self.eval_metrics:
            m.reset_state()
        data = task.build_inputs(training=False)
        if self.cfg.eval_steps:
            data = data.take(self.cfg.eval_steps)
        state = None
        for features, labels in self.strategy.experimental_distribute_dataset(data):
            out = self.eval_step(features, labels)
            if task.aggregates:
                state = task.aggregate_logs(state, *tf.nest.map_structure(lambda t: t.numpy(), out))
        row = {f"eval_{m.name}": float(m.result()) for m in self.eval_metrics}
        if task.aggregates:
            row.update({f"eval_{k}": float(v) for k, v in task.reduce_aggregated_logs(state).items()})
        return row

    def _save(self, step: int) -> None:
        """Flush every log up to ``step`` (a resumed run truncates them to its checkpoint), then checkpoint."""
        if not bool(self.weights_finite()):
            self._nonfinite(step, "weights")
        for writer in (self.train_writer, self.eval_writer):
            if writer is not None:
                writer.flush()
        for cb in self.callbacks:
            getattr(cb, "before_checkpoint", lambda *a: None)(self, step)
        path = self.manager.save(checkpoint_number=step)
        self.saved = (step, path if self.chief else str(self.ckpt_dir / Path(path).name))

    def _nonfinite(self, step: int, what: str, value: Optional[float] = None):
        saved, latest = self.saved
        where = f"the last good checkpoint is {latest} (step {saved})" if latest else "no checkpoint had been written yet"
        shown = f" ({value})" if value is not None else ""
        msg = (f"non-finite {what}{shown} at step {step}: training stopped and the weights of this step were not "
               f"saved; {where}. Lower --learning_rate, set --clip_grad_norm, or check the input data.")
        raise NonFiniteLossError(msg, step, latest)

    def _check_eval(self, step: int, row: Dict[str, Any]) -> None:
        """Stop like a non-finite training loss when the held-out loss is NaN/Inf (nothing is exported)."""
        value = row.get(f"eval_{LOSS}")
        if value is None or math.isfinite(value):
            return
        if not bool(self.weights_finite()):
            self._nonfinite(step, "weights")
        saved, latest = self.saved
        if saved == step:
            held = f"the checkpoint of this step ({latest}) holds the weights that gave it"
        else:
            held = ("these weights were not saved; " + (f"the last checkpoint is {latest} (step {saved})" if latest
                                                        else "no checkpoint had been written yet"))
        msg = (f"non-finite evaluation loss ({value}) after step {step}: training stopped and no model or "
               f"results.json was written; {held}. Lower --learning_rate, set --clip_grad_norm, or check the "
               f"held-out data.")
        raise NonFiniteLossError(msg, step, latest)

    def columns(self, rows: Sequence[Dict[str, Any]] = ()) -> List[str]:
        """metrics.csv's columns: epoch, step, learning_rate, train_/eval_<metric>, aggregated ones, seconds."""
        fixed = (["epoch", "step", "learning_rate"] + [f"train_{m.name}" for m in self.train_metrics]
                 + [f"eval_{m.name}" for m in self.eval_metrics])
        extra = [k for r in rows for k in r if k not in fixed and k != "seconds"]
        return fixed + list(dict.fromkeys(extra)) + ["seconds"]

    def _write_csv(self, rows: List[Dict[str, Any]]) -> None:
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(rows), extrasaction="ignore")
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
                row = {k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k}
                row["epoch"], row["step"] = int(row["epoch"]), int(row["step"])
            except (KeyError, TypeError, ValueError):
                continue
            if row["epoch"] <= upto_epoch:
                out.append(row)
        return out

    def _describe(self, start: int) -> None:
        cfg, log = self.cfg, self.log
        try:
            devices = ", ".join(sorted({d.rsplit("device:", 1)[-1] for d in self.strategy.extended.worker_devices}))
        except RuntimeError:   # the default strategy
            devices = "the default device"
        for line in self.task.describe():
            log(line)
        log(f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs = {self.total_steps} steps; dtype {cfg.dtype}"
            + (", XLA" if cfg.xla else ""))
        log(f"strategy {cfg.strategy}: {self.replicas} replica(s) on {devices}{describe_cluster(self.strategy)}; "
            f"global batch {cfg.batch_size} = {self.replicas} x {cfg.batch_size // self.replicas} per replica")
        scaling = (f"{cfg.learning_rate:g} per {cfg.lr_reference_batch} x {cfg.batch_size}/{cfg.lr_reference_batch}"
                   if cfg.lr_scaling else "unscaled")
        log(f"optimizer {cfg.optimizer}, peak lr {self.peak_lr:.4g} ({scaling}), {cfg.schedule} after "
            f"{self.warmup_steps} warm-up steps; weight decay {cfg.weight_decay:g} ({cfg.weight_decay_mode}); "
            f"EMA {'%g' % cfg.ema_decay if cfg.ema else 'off'}")
        if self.transforms:
            log(f"transforms: {', '.join(t.name for t in self.transforms)}")
        if start:
            log(f"resumed from {self.saved[1]} at step {start} (epoch {start // self.steps_per_epoch}"
                f" + {start % self.steps_per_epoch} steps)")

    def run(self) -> RunResult:
        """Train (or resume) to the configured number of epochs; returns the final metrics."""
        self._setup()
        lock = FolderLock(self.model_dir, log=self.log) if self.chief else contextlib.nullcontext()
        with lock:
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
                if self.scratch:
                    shutil.rmtree(self.scratch, ignore_errors=True)

    def _loop(self, start: int) -> RunResult:
        writers = {}
        if self.chief:   # logs read as an uninterrupted run's: what came after the checkpoint goes
            for k in ("train", "eval"):
                truncate_events(self.model_dir / "tensorboard" / k, start)
            writers = {k: tf.summary.create_file_writer(str(self.model_dir / "tensorboard" / k))
                       for k in ("train", "eval")}
        self.train_writer, self.eval_writer = writers.get("train"), writers.get("eval")
        history = self._read_csv(start // self.steps_per_epoch)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        stopped: Optional[str] = None
        try:
            for epoch in range(start // self.steps_per_epoch, self.cfg.epochs):
                self._epoch(epoch, history)
            if start >= self.total_steps:
                self.log(f"{self.model_dir} is already trained to step {start}; exporting the final model again")
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

    def _epoch(self, epoch: int, history: List[Dict[str, Any]]) -> None:
        cfg, step = self.cfg, self.step
        done = step - epoch * self.steps_per_epoch
        if not done:   # a resumed epoch keeps the running metrics restored with its checkpoint
            for m in self.train_metrics:
                m.reset_state()
        t0, seen = time.time(), 0
        ckpt_every = cfg.checkpoint_every or self.steps_per_epoch
        data = self.task.build_inputs(training=True, epoch=epoch, skip=done * cfg.batch_size)
        for features, labels in self.strategy.experimental_distribute_dataset(data):
            logs = {k: float(v) for k, v in self.train_step(features, labels).items()}
            step = self.step = step + 1
            seen += cfg.batch_size
            for key in (LOSS, "grad_norm"):
                if not math.isfinite(logs[key]) and not (key == "grad_norm" and cfg.dtype == "float16"):
                    self._nonfinite(step, "loss" if key == LOSS else "gradient norm", logs[key])
            logs["learning_rate"] = float(self.schedule(step - 1))   # the rate this step used
            if step % cfg.log_every == 0 or step == self.total_steps:
                self._log_step(step, epoch, logs, seen / max(time.time() - t0, 1e-9))
            for cb in self.callbacks:
                cb.on_step_end(self, step, logs)
            if step % ckpt_every == 0 or step == self.total_steps:   # after the step's logs: they go with it
                self._save(step)
            if step >= (epoch + 1) * self.steps_per_epoch:
                break
        row = {"epoch": epoch + 1, "step": step, "learning_rate": logs["learning_rate"],
               **{f"train_{m.name}": float(m.result()) for m in self.train_metrics},
               "seconds": round(time.time() - t0, 2)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            row.update(self.evaluate())
            self._check_eval(step, row)
        history.append(row)
        self._log_epoch(row)
        if self.chief:
            self._write_csv(history)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch + 1, row)

    def _log_step(self, step: int, epoch: int, logs: Dict[str, float], rate: float) -> None:
        extras = " ".join(f"{k} {v:.4g}" for k, v in logs.items() if k not in (LOSS, "learning_rate"))
        self.log(f"step {step}/{self.total_steps} (epoch {epoch + 1}/{self.cfg.epochs}) loss {logs[LOSS]:.4f} "
                 f"{extras} lr {logs['learning_rate']:.3g} | {rate:.0f} img/s")
        # every worker reads the running metrics: a read sums them over the workers (a collective all must join)
        running = {m.name: float(m.result()) for m in self.train_metrics[1:] if m.name not in logs}
        if self.train_writer is not None:
            with self.train_writer.as_default(step=step):
                for k, v in {**logs, **running}.items():
                    tf.summary.scalar(k, v)

    def _format(self, row: Dict[str, Any], prefix: str) -> str:
        """``loss 0.1234 accuracy 56.78% ...`` for the ``prefix``_ columns of ``row``."""
        parts = []
        for key in self.columns([row]):
            if key.startswith(prefix):
                name, value = key[len(prefix):], row.get(key)
                shown = ("-" if value is None else f"{100 * value:.2f}%" if name in self.task.percent
                         else f"{value:.4f}")
                parts.append(f"{name} {shown}")
        return " ".join(parts)

    def _log_epoch(self, row: Dict[str, Any]) -> None:
        self.log(f"epoch {row['epoch']}/{self.cfg.epochs} step {row['step']}: train {self._format(row, 'train_')} | "
                 f"eval {self._format(row, 'eval_')} | {row['seconds']}s")
        if not self.chief:
            return
        for prefix, writer in (("train_", self.train_writer), ("eval_", self.eval_writer)):
            values = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and v is not None}
            if values:
                with writer.as_default(step=row["step"]):
                    for name, value in values.items():
                        tf.summary.scalar(f"epoch_{name}", value)

    def _finish(self, start: int, history: List[Dict[str, Any]]) -> RunResult:
        cfg, task = self.cfg, self.task
        if int(self.step_var.numpy()) != self.saved[0]:   # the same decision on every worker
            self._save(int(self.step_var.numpy()))
        if cfg.ema:
            with self.strategy.scope():
                opt = getattr(self.optimizer, "inner_optimizer", self.optimizer)
                opt.finalize_variable_values(self.model.trainable_variables)
            self.log("final weights: the exponential moving average (EMA)")
        if cfg.ema or not history or history[-1].get(f"eval_{LOSS}") is None:
            final = self.evaluate()
            self._check_eval(int(self.step_var.numpy()), final)
        else:
            final = {k: v for k, v in history[-1].items() if k.startswith("eval_")}
        result = RunResult(str(self.model_dir), task.model_name, int(self.step_var.numpy()), self.total_steps,
                           cfg.epochs, final, history, start, chief=self.chief)
        model = self._exportable_model()
        if self.chief:
            path = task.export(model, self.model_dir)
            result.model_path = None if path is None else str(path)
            for transform in self.transforms:
                transform.export(model, self.model_dir)
            record = dict(result.to_dict(), **task.result_fields(), global_batch=cfg.batch_size,
                          replicas=self.replicas)
            fileio.write_json(self.model_dir / "results.json", record)
        self.log(f"done: step {result.steps}, held-out {self._format(final, 'eval_')}; model {result.model_path}")
        return result

    def _exportable_model(self):
        """The trained model for export, under the float32 policy. On a cluster every worker reads the weights
        (reading synced variables, e.g. BatchNorm's moving statistics, is a collective all must join) and the
        chief gets a copy with plain variables, which it can read and save alone."""
        keras.mixed_precision.set_global_policy("float32")
        if not cluster_tasks(self.strategy):
            return self.model
        weights = self.model.get_weights()
        if not self.chief:
            return None
        model = self.task.build_model()
        for transform in self.transforms:
            model = transform.apply(model)
        model.set_weights(weights)
        return model


def train(cfg: TrainConfig, spec=None, *, transforms: Sequence[ModelTransform] = (),
          callbacks: Sequence[Callback] = (), log: Callable[[str], None] = print) -> RunResult:
    """Run (or resume) the task --task names (default classification) on ``spec`` (None: --model's)."""
    from ran_keras.tasks import make_task
    task = make_task(cfg, spec)
    return Trainer(cfg, task, [*transforms, *config_transforms(cfg, task)], callbacks, log).run()


def config_transforms(cfg: TrainConfig, task: Task) -> List[ModelTransform]:
    """The transforms the config asks for: ``--qat`` (fine-tuning from ``--init_model``)."""
    if cfg.init_model and not cfg.qat:
        raise ConfigError(f"--init_model={cfg.init_model} is used with --qat only; add --qat or drop it")
    if not cfg.qat:
        return []
    if cfg.init_model and not Path(cfg.init_model).is_file():
        raise ConfigError(f"--init_model: no file {cfg.init_model!r} (a float .keras model, e.g. a run's model.keras)")
    from ran_keras.quant.qat import QATTransform
    return [QATTransform(cfg.init_model, spec=getattr(task, "spec", None))]
