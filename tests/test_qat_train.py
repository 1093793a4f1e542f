"""``ran train --qat``: fine-tuning a float run's model.keras with fake quantisation through the same
trainer (resume included), int8 TFLite without representative data beside model.keras."""

import json

import numpy as np
import pytest

from ran_keras.train.config import ConfigError

from test_train_loop import tiny_cfg, tiny_spec


def test_qat_fine_tunes_a_float_run_writes_int8_and_resumes(tmp_path):
    from ran_keras.builder import load_model
    from ran_keras.export.flatbuffer import inspect_tflite
    from ran_keras.train.trainer import train
    spec = tiny_spec("qtiny")
    train(tiny_cfg(tmp_path / "float", epochs=1), spec)
    start = load_model(tmp_path / "float" / "model.keras")
    qat_dir = tmp_path / "qat"
    qcfg = tiny_cfg(qat_dir, epochs=1, qat=True, init_model=str(tmp_path / "float" / "model.keras"))
    first = train(qcfg, spec)
    assert first.steps == 3
    info = inspect_tflite((qat_dir / "model_int8.tflite").read_bytes())
    assert info.float_tensors == [] and info.inputs[0].dtype == "INT8" and info.outputs[0].dtype == "INT8"
    assert "LEAKY_RELU" in info.op_counts          # the AFRBs' shared-alpha PReLUs, split per call
    report = json.loads((qat_dir / "model_int8.json").read_text())
    assert report["representative_dataset"] is None and 0 <= report["agreement"]["top1_agreement"] <= 1
    tuned = load_model(qat_dir / "model.keras")   # float weights of the QAT run, copied by name
    kernel = lambda m: m.get_layer("qtiny_stage2_block1_project").get_weights()[0]  # noqa: E731
    assert not np.allclose(kernel(tuned), kernel(start)) and np.abs(kernel(tuned) - kernel(start)).max() < 0.5
    alpha = lambda m: float(m.get_layer("qtiny_stage1_block1_alpha").alpha.numpy())  # noqa: E731
    assert alpha(tuned) == pytest.approx(alpha(start))   # frozen during QAT
    resumed = train(tiny_cfg(qat_dir, epochs=2, qat=True, init_model=str(tmp_path / "float" / "model.keras")), spec)
    assert (resumed.resumed_from, resumed.steps) == (3, 6)


@pytest.mark.parametrize("values, message", [
    (dict(init_model="x.keras"), "--init_model=x.keras is used with --qat only"),
    (dict(init_model="missing.keras", qat=True), "--init_model: no file 'missing.keras'"),
])
def test_qat_settings_are_checked_before_training(tmp_path, values, message):
    from ran_keras.train.trainer import train
    with pytest.raises(ConfigError, match=message):
        train(tiny_cfg(tmp_path, **values), tiny_spec())
