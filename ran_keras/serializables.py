"""Register ran_keras's custom layers with Keras as soon as tf_keras is imported.

tf_keras rebuilds a custom layer of a saved model only when its class is registered before
loading (an unregistered one comes back as its name: ``TypeError: 'str' object is not callable``).
``import ran_keras`` must not import TensorFlow (the ``ran`` start-up stays light), so instead of
importing ``ran_keras.layers`` eagerly, ``install`` makes the import of ``tf_keras`` (directly,
or through ``tf.keras``) import it right after, and any Keras loader then works.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

KERAS_MODULE = "tf_keras"
LAYERS_MODULE = "ran_keras.layers"
BACKEND_MODULE = "ran_keras.backend"


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``tf_keras`` so the layers register after it ran
    (TensorFlow also asks for tf_keras's spec without importing it: the finder stays until then)."""

    searching = False

    def find_spec(self, name, path=None, target=None):
        if name != KERAS_MODULE or self.searching:
            return None
        self.searching = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _uninstall()
            backend = sys.modules.get(BACKEND_MODULE)
            if backend is not None and not hasattr(backend, "keras"):
                return  # ran_keras.backend is importing tf_keras; the layers cannot load yet (builder loads them)
            try:
                importlib.import_module(LAYERS_MODULE)
            except Exception as err:  # noqa: BLE001 - never break the user's import of tf_keras
                warnings.warn(f"ran_keras: custom layers not registered with Keras ({err}); "
                              f"import {LAYERS_MODULE} before loading saved models", RuntimeWarning)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register the layers now if tf_keras is loaded, else when it gets imported."""
    if LAYERS_MODULE in sys.modules:
        return
    if KERAS_MODULE in sys.modules:
        importlib.import_module(LAYERS_MODULE)
    elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterKeras())


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterKeras)]
