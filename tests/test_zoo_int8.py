"""Every registered model exports to an all-integer int8 TFLite file at a small input size (its own
file so that a parallel test run can give this, the longest registry sweep, a worker of its own)."""

import pytest

import ran_keras

from conftest import ALL_MODELS


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_int8_export_has_no_float_tensor(name, tmp_path):
    from ran_keras.export.pipeline import export_model
    size = 2 * ran_keras.get_spec(name).total_stride      # every stage at least 2x2
    report = export_model(name, tmp_path / f"{name}.tflite", input_size=size, classes=10, calibration="random",
                          samples=2, compare=False)
    assert report.info.float_tensors == [] and report.info.inputs[0].dtype == "INT8"
