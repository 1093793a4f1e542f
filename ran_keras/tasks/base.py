"""The task interface: what the training loop asks of a problem (classification, detection, ...).

The loop (``ran_keras.train.trainer``) owns distribution, mixed precision, the optimizer and its
schedule, checkpoints and exact resume, the NaN stop, logs, TensorBoard and metrics.csv. A task
owns what is specific to a problem: its data, model, losses, metrics and final artefact. The
shape follows Model Garden's ``Task`` (tensorflow/models, official/core/base_task.py); the loop
stays fixed, so a new task is one class and one registry entry (``ran_keras.tasks``).

Call order: ``setup`` (host, before anything is built) -> ``build_model`` (in the strategy scope)
-> per step ``build_inputs`` / ``forward`` / ``build_losses`` / ``process_metrics`` (replica
context) -> per evaluation ``aggregate_logs`` (host, numpy) and ``reduce_aggregated_logs`` ->
``export`` (chief, float32 policy). No TensorFlow at import.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ran_keras.errors import RanError

if TYPE_CHECKING:
    from ran_keras.train.config import TrainConfig


class TaskError(RanError, ValueError):
    """A task that does not fit the loop (e.g. a metric name used twice)."""


class Task(abc.ABC):
    """One problem for the training loop. Registered tasks are constructed as ``cls(cfg, spec=None)``.

    After ``setup``, ``train_examples`` (None if unknown) and ``data_name`` size an epoch and name
    the data in messages. Metric names are stable: the loop logs them as ``train_<name>`` /
    ``eval_<name>`` (metrics.csv columns); ``loss`` is the loop's own.
    """

    name: str = ""
    #: metric names the logs show as percentages
    percent: Tuple[str, ...] = ()

    def __init__(self, cfg: "TrainConfig"):
        self.cfg = cfg
        self.train_examples: Optional[int] = None
        self.data_name = "the data"

    def setup(self, strategy) -> None:
        """Resolve data sources and sizes; raise ConfigError (naming the flag) on what cannot work."""

    def resolved(self) -> Dict[str, Any]:
        """TrainConfig fields resolved from the model or the data, e.g. image_size (written to config.json
        as resolved, compared so on resume)."""
        return {}

    @abc.abstractmethod
    def build_model(self):
        """The Keras model to train (called in the strategy scope, under the run's dtype policy)."""

    @abc.abstractmethod
    def build_inputs(self, training: bool, epoch: int = 0, skip: int = 0):
        """A tf.data.Dataset of ``(features, labels)`` global batches.

        Training: endless, epoch ``epoch`` seeded so that leaving out its first ``skip`` examples
        gives exactly the batches an uninterrupted run sees after them. Evaluation: one pass.
        """

    def forward(self, model, features, labels, training: bool):
        """The model's outputs, floats cast to float32 (labels are there for tasks that need them)."""
        from ran_keras.backend import tf
        outputs = model(features, training=training)
        return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype.is_floating else t, outputs)

    @abc.abstractmethod
    def build_losses(self, labels, outputs, model, training: bool = True) -> Tuple[Any, Dict[str, Any]]:
        """(this replica's loss as a share of the global batch's mean, {name: term logged per step}).

        Summed over the replicas, the loss is the mean over the global batch (divide by
        ``cfg.batch_size``, e.g. ``tf.nn.compute_average_loss(..., global_batch_size=cfg.batch_size)``).
        """

    def build_metrics(self, training: bool) -> List[Any]:
        """Keras metrics updated by ``process_metrics`` (built in the strategy scope)."""
        return []

    def process_metrics(self, metrics: Sequence[Any], labels, outputs) -> None:
        for metric in metrics:
            metric.update_state(labels, outputs)

    def aggregate_logs(self, state, labels, outputs):
        """Fold one evaluation batch (numpy, all replicas) into ``state`` (None at first); returns it."""
        return state

    def reduce_aggregated_logs(self, state) -> Dict[str, float]:
        """Metrics over a whole evaluation pass from the aggregated ``state`` (None: no batches)."""
        return {}

    @property
    def aggregates(self) -> bool:
        """Whether evaluation outputs are brought to the host for ``aggregate_logs``."""
        return type(self).aggregate_logs is not Task.aggregate_logs

    @abc.abstractmethod
    def fingerprint(self) -> Dict[str, Any]:
        """What a resumed run must not change (e.g. the spec dict), with a ``name``; saved as spec.json."""

    @property
    def model_name(self) -> str:
        return str(self.fingerprint().get("name") or self.name)

    def describe(self) -> List[str]:
        """Log lines saying what is trained on what."""
        return []

    def export(self, model, model_dir: Path) -> Optional[Path]:
        """Write the final artefact (default: the trained model as model.keras); returns its path."""
        from ran_keras import fileio
        path = Path(model_dir) / "model.keras"
        with fileio.atomic_path(path, suffix=".keras") as tmp:
            model.save(tmp)
        return path

    def result_fields(self) -> Dict[str, Any]:
        """Extra fields of results.json (e.g. params, MACs, classes, dataset)."""
        return {}
