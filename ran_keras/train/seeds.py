"""Dropout and stochastic-depth masks drawn from the training step, so a resumed run draws the same ones.

Keras' Dropout draws its masks from a stateful random stream that restarts with every process, so a
run resumed from a checkpoint would drop other units than the uninterrupted run did. The trainer
gives every Dropout layer (stochastic depth is a Dropout with a per-sample noise shape) a stateless
seed made of the run's ``--seed``, the layer's name, the global step and the replica: the mask of a
step is a function of where the run is, not of what ran before in this process.
"""

from __future__ import annotations

import zlib
from typing import Callable

from ran_keras.backend import keras, tf

#: replicas a step can be spread over without two of them sharing a seed
MAX_REPLICAS = 1 << 16


class StepSeededMasks:
    """A Dropout layer's mask source (the ``dropout`` method Keras' Dropout calls): stateless masks seeded
    by (``key``, step * MAX_REPLICAS + replica). Everything else (``_rng_type``, which the layer's
    ``get_config`` reads when the model is saved) comes from the generator it replaces."""

    def __init__(self, key: int, step: Callable[[], "tf.Tensor"], replaced=None):
        self.key, self.step, self._replaced = int(key), step, replaced

    def __getattr__(self, name):
        replaced = self.__dict__.get("_replaced")
        if replaced is None:
            raise AttributeError(name)
        return getattr(replaced, name)

    def seed(self):
        ctx = tf.distribute.get_replica_context()
        replica = 0 if ctx is None else ctx.replica_id_in_sync_group
        counter = tf.cast(self.step(), tf.int64) * MAX_REPLICAS + tf.cast(replica, tf.int64)
        return tf.stack([tf.constant(self.key, tf.int64), counter])

    def dropout(self, inputs, rate, noise_shape=None):
        return tf.nn.experimental.stateless_dropout(inputs, rate=rate, noise_shape=noise_shape, seed=self.seed())


def layer_key(seed: int, name: str) -> int:
    """A 62-bit key per (run seed, layer name): distinct layers draw independent masks."""
    return (int(seed) * 0x9E3779B1 + zlib.crc32(name.encode())) % (1 << 62)


def bind_step_seeds(model, step_variable, seed: int) -> int:
    """Make every Dropout layer of ``model`` (nested ones too) seed its masks by ``step_variable``; returns
    how many were bound. Inference is unchanged (Dropout is the identity there)."""
    count = 0
    for layer in model.submodules:
        if isinstance(layer, keras.layers.Dropout):
            layer._random_generator = StepSeededMasks(layer_key(seed, layer.name), step_variable.read_value,
                                                      layer._random_generator)
            count += 1
    return count
