"""Padding for max pooling with PyTorch's symmetric convention."""

from __future__ import annotations

from ran_keras.backend import keras, tf


@keras.utils.register_keras_serializable(package="ran_keras")
class EdgePad(keras.layers.Layer):
    """Pad height and width by ``pad`` on each side with mirrored border values (TFLite MIRROR_PAD).

    PyTorch's ``MaxPool2d(k, s, padding=p)`` pads with -inf and requires ``p <= k // 2``; every
    window that covers padding then also covers the border values mirrored into it, so padding with
    them gives the same maxima as -inf would, for any input sign (zeros would not), and needs no
    out-of-range constant that int8 calibration would choke on.
    """

    def __init__(self, pad: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, inputs):
        p = self.pad
        return tf.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="SYMMETRIC")

    def compute_output_shape(self, input_shape):
        grow = lambda d: None if d is None else d + 2 * self.pad  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return dict(super().get_config(), pad=self.pad)
