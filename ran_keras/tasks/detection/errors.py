"""Errors the detection building blocks raise on purpose."""

from __future__ import annotations

from ran_keras.errors import RanError


class DetectionError(RanError, ValueError):
    """A detection setting or input that cannot work; the message says what is accepted."""


class DetectionDataError(DetectionError):
    """A detection dataset (annotation file, image folder, TFDS data_dir) that cannot be read."""
