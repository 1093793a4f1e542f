"""The bounded exponential, a co-design ψ that cannot overflow (paper Sec. 4, beyond the paper)."""

from __future__ import annotations

import math

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class BoundedExp(keras.layers.Layer):
    """``exp(L * tanh(z / L))``: the paper's ψ = e^z squashed through a tanh of range ``L`` (``limit``).

    Near zero ``L tanh(z / L) = z - z^3 / (3 L^2) + ...``, so ψ keeps e^z's series (1 + z + z^2/2 + ...,
    the "implicit high-dimensional" kernel feature) where the pre-activations live. For every
    input, including +-inf, the exponent lies in [-L, L]: the output stays in [e^-L, e^L] and the
    gradient below e^L, so neither can overflow (e^z overflows float32 above z ~ 88.7 and then turns
    the loss into NaN). In TFLite it is MUL, TANH, MUL, EXP, all lookup tables or element-wise ops
    Ethos-U runs on the NPU.
    """

    def __init__(self, limit: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= 80 \
                or not math.isfinite(limit):
            raise ValueError(f"BoundedExp: limit must be a number in (0, 80] (e^80 still fits float32), "
                             f"got {limit!r}")
        self.limit = float(limit)

    def call(self, inputs):
        return tf.exp(self.limit * tf.tanh(inputs * (1.0 / self.limit)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), limit=self.limit)
