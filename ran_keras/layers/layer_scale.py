"""ConvNeXt's layer scale."""

from __future__ import annotations

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class LayerScale(keras.layers.Layer):
    """ConvNeXt's layer scale: ``x * gamma`` with one trainable factor per channel.

    ``gamma`` starts at ``init`` (ConvNeXt: 1e-6), so each residual branch starts almost shut.
    Element-wise and linear, so it could be folded into the preceding 1x1 convolution; exported
    as is, it is one MUL.
    """

    def __init__(self, init: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.init = float(init)

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(int(input_shape[-1]),), trainable=True,
                                     initializer=keras.initializers.Constant(self.init))
        super().build(input_shape)

    def call(self, inputs):
        return inputs * tf.cast(self.gamma, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), init=self.init)
