"""Shared test set-up: quiet TensorFlow, import ran_keras first (it selects tf_keras)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import ran_keras  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

ALL_MODELS = ran_keras.list_models()


@pytest.fixture(scope="session")
def keras():
    from ran_keras.backend import keras as k
    return k


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(0)
