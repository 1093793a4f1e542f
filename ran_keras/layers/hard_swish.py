"""Hard-swish as a layer (tf_keras has no built-in one)."""

from __future__ import annotations

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class HardSwish(keras.layers.Layer):
    """x * relu6(x + 3) / 6; the TFLite converter turns it into one HARD_SWISH op."""

    def call(self, inputs):
        return inputs * tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0)

    def compute_output_shape(self, input_shape):
        return input_shape
