"""Every registered model quantises with tfmot at a small input (its own file so that a parallel test
run can give this registry sweep a worker of its own)."""

import numpy as np
import pytest

import ran_keras
from ran_keras.quant.qat import quantize

from conftest import ALL_MODELS
from test_quant import _calibrate


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_registered_model_quantises(name):
    size = 2 * ran_keras.get_spec(name).total_stride
    model = ran_keras.create_model(name, (size, size, 3), classes=5, seed=0)
    qat = quantize(model)
    x = _calibrate(qat, (size, size, 3), steps=1)
    assert np.all(np.isfinite(qat(x, training=False).numpy()))
    wrapped = {layer.layer.name for layer in qat.layers if hasattr(layer, "layer")}
    assert wrapped, "nothing was quantised"
