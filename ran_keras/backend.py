"""The one module that imports TensorFlow and Keras. Everything else imports them from here.

ran_keras uses tf_keras (the Keras 2 API) because TensorFlow Model Optimization's QAT only
works on tf_keras models, and importing tfmot switches the whole process to legacy Keras
anyway. ``ran_keras/__init__.py`` sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow can be
imported, so ``tf.keras``, tfmot and ran_keras all see the same Keras.
"""

from __future__ import annotations

import os
import sys
import warnings

_TF_WAS_LOADED = "tensorflow" in sys.modules
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

layers = keras.layers

if _TF_WAS_LOADED and not getattr(tf, "_tf_uses_legacy_keras", True):
    warnings.warn(
        "TensorFlow was imported before ran_keras without TF_USE_LEGACY_KERAS=1, so tf.keras is "
        "Keras 3 in this process while ran_keras builds tf_keras models. Do not mix tf.keras "
        "layers into ran_keras models; import ran_keras first (or set TF_USE_LEGACY_KERAS=1).",
        RuntimeWarning, stacklevel=2)

__all__ = ["tf", "keras", "layers"]
