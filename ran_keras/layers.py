"""Custom Keras layers of ran_keras (all registered for saving/loading under 'ran_keras>')."""

from __future__ import annotations

from typing import Optional, Sequence

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class ClipAlpha(keras.constraints.Constraint):
    """Keep a scalar alpha inside [low, high] after every update."""

    def __init__(self, low: float, high: float):
        if not low < high:
            raise ValueError(f"ClipAlpha needs low < high, got low={low!r}, high={high!r}")
        self.low, self.high = float(low), float(high)

    def __call__(self, w):
        return tf.clip_by_value(w, self.low, self.high)

    def get_config(self):
        return {"low": self.low, "high": self.high}


@keras.utils.register_keras_serializable(package="ran_keras")
class SharedAlphaPReLU(keras.layers.Layer):
    """The AFRB's PReLU pair: one trainable scalar alpha, called at two places of a block.

    ``layer(x)`` is PReLU with slope ``alpha`` (after the depthwise conv); ``layer(x,
    complement=True)`` is PReLU with slope ``1 - alpha`` (before the 1x1 expansion). PReLU(x; a)
    = max(x, 0) + a * min(x, 0), so a = 0 is ReLU and a = 1 the identity: alpha = 0 makes the
    block IBN-like, alpha = 1 leaves only the leading ReLU and makes the rest linear (foldable).
    """

    def __init__(self, alpha_init: float = 0.5, alpha_clip: Optional[Sequence[float]] = None, **kwargs):
        super().__init__(**kwargs)
        self.alpha_init = float(alpha_init)
        if alpha_clip is not None:
            alpha_clip = tuple(float(v) for v in alpha_clip)
            if len(alpha_clip) != 2 or not alpha_clip[0] < alpha_clip[1]:
                raise ValueError(f"alpha_clip must be (low, high) with low < high, got {alpha_clip!r}")
        self.alpha_clip = alpha_clip

    def build(self, input_shape):
        constraint = ClipAlpha(*self.alpha_clip) if self.alpha_clip else None
        self.alpha = self.add_weight(name="alpha", shape=(), trainable=True, constraint=constraint,
                                     initializer=keras.initializers.Constant(self.alpha_init))
        super().build(input_shape)

    def call(self, inputs, complement: bool = False):
        alpha = tf.cast(self.alpha, inputs.dtype)
        slope = 1.0 - alpha if complement else alpha
        # max(x, 0) + slope * min(x, 0): with relu(-x) the int8 converter leaves a float NEG behind
        return tf.nn.relu(inputs) + slope * tf.minimum(inputs, 0.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), alpha_init=self.alpha_init,
                    alpha_clip=list(self.alpha_clip) if self.alpha_clip else None)


@keras.utils.register_keras_serializable(package="ran_keras")
class HardSwish(keras.layers.Layer):
    """x * relu6(x + 3) / 6; the TFLite converter turns it into one HARD_SWISH op."""

    def call(self, inputs):
        return inputs * tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0)

    def compute_output_shape(self, input_shape):
        return input_shape


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


def activation_layer(fn: str, name: str):
    """The Keras layer for a canonical activation name (see ran_keras.activations)."""
    if fn == "relu":
        return keras.layers.ReLU(name=name)
    if fn == "relu6":
        return keras.layers.ReLU(6.0, name=name)
    if fn == "hard_swish":
        return HardSwish(name=name)
    if fn in ("swish", "gelu"):
        return keras.layers.Activation(fn, name=name)
    if fn == "prelu":
        return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25),
                                  shared_axes=[1, 2], name=name)
    raise ValueError(f"no Keras layer for activation {fn!r}")


CUSTOM_OBJECTS = {"ran_keras>SharedAlphaPReLU": SharedAlphaPReLU, "ran_keras>HardSwish": HardSwish,
                  "ran_keras>ClipAlpha": ClipAlpha, "ran_keras>LayerScale": LayerScale,
                  "ran_keras>BorderBias": BorderBias}
