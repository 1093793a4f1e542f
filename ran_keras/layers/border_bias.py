"""The constant border map the rewriter adds after some folded convolutions."""

from __future__ import annotations

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class BorderBias(keras.layers.Layer):
    """Adds a constant (H, W, C) map, zero in the interior: the border term of a folded chain.

    ``ran_keras.rewrite`` puts it after a convolution folded from a chain whose spatial op saw a
    bias (e.g. a BN shift after a 1x1 expansion); see ``ran_keras.rewrite.linear`` for why the
    term exists and why it is exact. Not trainable. TFLite: one ADD with a constant.
    """

    def build(self, input_shape):
        shape = tuple(input_shape[1:])
        if any(d is None for d in shape):
            raise ValueError(f"BorderBias needs a fixed spatial input size, got {tuple(input_shape)}")
        self.bias_map = self.add_weight(name="bias_map", shape=shape, trainable=False,
                                        initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return inputs + tf.cast(self.bias_map, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
