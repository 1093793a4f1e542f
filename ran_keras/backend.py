"""The one module that imports TensorFlow and Keras. Everything else imports them from here.

ran_keras uses tf_keras (the Keras 2 API) because TensorFlow Model Optimization's QAT only
works on tf_keras models, and importing tfmot switches the whole process to legacy Keras
anyway. ``ran_keras/__init__.py`` sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow can be
imported, so ``tf.keras``, tfmot and ran_keras all see the same Keras.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Sequence

_TF_WAS_LOADED = "tensorflow" in sys.modules
os.environ["TF_USE_LEGACY_KERAS"] = "1"

#: start-up lines TensorFlow's C++ side prints before its logging is configured (so
#: TF_CPP_MIN_LOG_LEVEL cannot silence them); they are dropped, every other line is kept
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
)


@contextlib.contextmanager
def filtered_stderr(noise: Sequence[str]):
    """Capture file descriptor 2 (where TensorFlow's C++ side writes) and write back every line
    that contains none of ``noise``: known chatter goes, warnings and errors stay.

    Set RAN_KERAS_TF_LOGS=1 to see everything.
    """
    if os.environ.get("RAN_KERAS_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not any(n in line for n in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


with filtered_stderr(_STARTUP_NOISE):
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

    tf.config.list_physical_devices()  # initialise the device platforms now, inside the filter

layers = keras.layers

if _TF_WAS_LOADED and not getattr(tf, "_tf_uses_legacy_keras", True):
    warnings.warn(
        "TensorFlow was imported before ran_keras without TF_USE_LEGACY_KERAS=1, so tf.keras is "
        "Keras 3 in this process while ran_keras builds tf_keras models. Do not mix tf.keras "
        "layers into ran_keras models; import ran_keras first (or set TF_USE_LEGACY_KERAS=1).",
        RuntimeWarning, stacklevel=2)

__all__ = ["tf", "keras", "layers", "filtered_stderr"]
