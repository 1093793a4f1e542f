"""The AFRB's shared-alpha PReLU and the constraint that clips its alpha."""

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
