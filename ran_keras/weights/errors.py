"""The one exception the weights package raises on purpose."""

from __future__ import annotations

from ran_keras.errors import RanError


class WeightsError(RanError, ValueError):
    """A weights file that cannot be read safely, or weights that do not fit a model."""
