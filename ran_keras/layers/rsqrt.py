"""1 / sqrt(max(x, floor)) as a layer, for the quantisable form of LayerNorm."""

from __future__ import annotations

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class Rsqrt(keras.layers.Layer):
    """``1 / sqrt(max(x, floor))`` element-wise (TFLite MAXIMUM + RSQRT). ``ran_keras.quant``
    builds LayerNorm from it and other small layers so tfmot can fake-quantise every intermediate
    tensor; the floor (LayerNorm's epsilon) keeps a variance that int8 rounds to 0 finite."""

    def __init__(self, floor: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if not float(floor) > 0:
            raise ValueError(f"Rsqrt floor must be > 0, got {floor!r}")
        self.floor = float(floor)

    def call(self, inputs):
        return tf.math.rsqrt(tf.maximum(inputs, tf.cast(self.floor, inputs.dtype)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), floor=self.floor)
