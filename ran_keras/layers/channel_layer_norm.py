"""LayerNorm over channels in ops Ethos-U runs: the channel means as 1x1 convolutions."""

from __future__ import annotations

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class ChannelLayerNorm(keras.layers.Layer):
    """LayerNormalization over the last axis of (N, H, W, C) maps, with the channel means as
    1x1 convolutions whose constant weights are 1/C.

    Same function as ``LayerNormalization(axis=-1)`` (float results agree to rounding):
    ``d = x - mean_c(x)``, ``y = d * rsqrt(mean_c(d * d) + epsilon) * gamma + beta``. Vela 5.2
    runs a MEAN over depth only when H, W or C is 1, so the Keras layer leaves two MEANs per
    LayerNorm on the CPU; here each mean is a CONV_2D to one channel (C MACs a pixel), and the
    rest (broadcast SUB, MUL, ADD, RSQRT) runs on the NPU too. ``ran_keras.rewrite.layernorm``
    swaps it in at export.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        if not float(epsilon) > 0:
            raise ValueError(f"ChannelLayerNorm epsilon must be > 0, got {epsilon!r}")
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"ChannelLayerNorm takes (N, H, W, C) inputs with known C, got {tuple(input_shape)}")
        c = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones", trainable=True)
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        c = int(inputs.shape[-1])
        mean_kernel = tf.fill((1, 1, c, 1), tf.constant(1.0 / c, inputs.dtype))
        centred = inputs - tf.nn.conv2d(inputs, mean_kernel, 1, "VALID")
        variance = tf.nn.conv2d(centred * centred, mean_kernel, 1, "VALID")
        scale = tf.math.rsqrt(variance + self.epsilon) * tf.cast(self.gamma, inputs.dtype)
        return centred * scale + tf.cast(self.beta, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), epsilon=self.epsilon)
