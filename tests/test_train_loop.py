"""The training loop: outputs, exact resume with optimizer slots, NaN stop, MirroredStrategy, recipes."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ran_keras.train.config import ConfigError, resolve_config
from ran_keras.spec import BlockSpec, NetworkSpec
from ran_keras.train.trainer import Callback


def tiny_spec(name="tiny"):
    return NetworkSpec(name=name, activation="hard_swish", input_size=16, bn_momentum=0.9,
                       stem=(BlockSpec("conv", channels=8, kernel=3, stride=2),),
                       stages=((BlockSpec("afrb1", channels=8, expansion=2), BlockSpec("afrb2", channels=8, expansion=2)),
                               (BlockSpec("ibn", channels=12, expansion=2, stride=2),)))


def tiny_cfg(model_dir, **kw):
    values = dict(model_dir=str(model_dir), image_size=16, batch_size=8, steps_per_epoch=3, epochs=2,
                  eval_steps=2, log_every=100, optimizer="rmsprop", learning_rate=0.01, warmup_epochs=0)
    values.update(kw)
    return resolve_config("digits", values)


class RaiseAt(Callback):
    """Stops a run by raising at a step, after snapshotting the optimizer's variables at ``snap``."""

    def __init__(self, step, snap=None):
        self.step, self.snap, self.saved = step, snap, None

    def on_step_end(self, trainer, step, logs):
        if step == self.snap:
            self.saved = [v.numpy().copy() for v in trainer.optimizer.variables]
        if step == self.step:
            raise KeyboardInterrupt(f"stop at {step}")


class OnBegin(Callback):
    """Records the step and the optimizer's variables a (resumed) run starts from."""

    def __init__(self):
        self.begin_step, self.begin_vars = None, None

    def on_train_begin(self, trainer):
        self.begin_step = trainer.step
        self.begin_vars = [v.numpy().copy() for v in trainer.optimizer.variables]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 6-step run: the reference for resume."""
    from ran_keras.train.trainer import train
    out = tmp_path_factory.mktemp("straight")
    return train(tiny_cfg(out), tiny_spec()), out


def test_outputs_of_a_run(straight):
    from ran_keras.builder import load_model
    result, out = straight
    assert result.steps == 6 == result.total_steps
    for name in ("config.json", "spec.json", "metrics.csv", "results.json", "model.keras", "model.spec.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.suffix == ".index") == [
        "ckpt-3.index", "ckpt-6.index"]
    assert list((out / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((out / "tensorboard" / "eval").glob("events.out.tfevents.*"))
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,learning_rate,train_loss") and len(lines) == 3
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 6 and 0 <= results["final"]["eval_accuracy"] <= 1
    assert NetworkSpec.load(out / "model.spec.json") == tiny_spec()
    model = load_model(out / "model.keras")
    probs = model.predict(np.zeros((2, 16, 16, 3), np.float32), verbose=0)
    assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)   # softmax, float32


def test_resume_restores_optimizer_slots_and_matches_uninterrupted(straight, tmp_path):
    from ran_keras.train.trainer import train
    ref, ref_dir = straight
    cfg = tiny_cfg(tmp_path, checkpoint_every=2)
    stopper = RaiseAt(step=5, snap=4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_spec(), callbacks=[stopper])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".index")[-1] == "ckpt-4.index"
    probe = OnBegin()
    result = train(cfg, tiny_spec(), callbacks=[probe])
    assert probe.begin_step == 4 and result.steps == 6 and result.resumed_from == 4
    # every optimizer variable (iterations, RMSprop rms + momentum slots) is back exactly as saved at step 4
    assert len(probe.begin_vars) == len(stopper.saved) > 2
    slots = [v for v in probe.begin_vars if v.ndim > 0]
    assert slots and all(np.abs(v).sum() > 0 for v in slots)
    for restored, saved in zip(probe.begin_vars, stopper.saved):
        np.testing.assert_array_equal(restored, saved)
    # the resumed run saw the same batches and ends where the uninterrupted one did
    from ran_keras.builder import load_model
    a = load_model(ref_dir / "model.keras").get_weights()
    b = load_model(tmp_path / "model.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
    # a finished run re-exports and does not train again
    again = train(cfg, tiny_spec())
    assert again.steps == 6 and again.resumed_from == 6


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 16}, "--batch_size was 8, now 16"),
    ({"steps_per_epoch": 4}, "--steps_per_epoch was 3, now 4"),
    ({"steps_per_epoch": None}, "--steps_per_epoch was 3, now 179 (as resolved"),   # 1437 training digits // 8
    ({"image_size": 24}, "--image_size was 16, now 24"),
    ({"validation_fraction": 0.3}, "--validation_fraction was 0.2, now 0.3"),
    ({"shuffle_buffer": 64}, "--shuffle_buffer was 10000, now 64"),
    ({"seed": 1}, "--seed was 0, now 1"),
])
def test_resume_refuses_settings_that_change_data_order_or_schedule(straight, change, message):
    from ran_keras.train.trainer import train
    _, out = straight
    with pytest.raises(ConfigError, match=re.escape(f"cannot resume {out}: {message}")):
        train(tiny_cfg(out, **change), tiny_spec())


def test_resume_refuses_another_model_and_compares_resolved_values(straight):
    from ran_keras.tasks.classification import ClassificationTask
    from ran_keras.train.trainer import Trainer, train
    _, out = straight
    with pytest.raises(ConfigError, match="different architecture"):
        train(tiny_cfg(out), tiny_spec("other"))
    # no image size at all (not even the recipe's): it resolves to the spec's 16, the size the run was
    # trained at, so resuming is allowed
    cfg = tiny_cfg(out).replace(image_size=None)
    trainer = Trainer(cfg, ClassificationTask(cfg, tiny_spec()))
    trainer._setup()
    trainer._check_model_dir()
    assert trainer.task.image_size == 16
    assert json.loads((out / "config.json").read_text())["image_size"] == 16


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from ran_keras.backend import tf
    from ran_keras.train.trainer import NonFiniteLossError, train

    class Poison(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 3:
                kernel = trainer.model.get_layer("tiny_stem_block1_conv").kernel
                kernel.assign(tf.fill(kernel.shape, float("nan")))

    with pytest.raises(NonFiniteLossError) as err:
        train(tiny_cfg(tmp_path, checkpoint_every=2, steps_per_epoch=6, epochs=1), tiny_spec(), callbacks=[Poison()])
    msg = str(err.value)
    assert "non-finite loss (nan) at step 4" in msg and "ckpt-2" in msg and "not saved" in msg
    assert err.value.step == 4 and err.value.checkpoint.endswith("ckpt-2")
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".index")
    assert ckpts == ["ckpt-2.index"]
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-2"))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name


def test_convnext_recipe_trains_a_tiny_convnext(tmp_path):
    """AdamW + decoupled decay + EMA + RandAugment + mixup/CutMix + drop path, on whatever is registered."""
    from ran_keras import get_spec
    from ran_keras.spec import scale_depth, scale_width
    from ran_keras.train.trainer import train
    spec = scale_depth(scale_width(get_spec("convnext_tiny"), 1 / 12, head=True), 0.34, name="convnext_micro")
    cfg = resolve_config("convnext", dict(model_dir=str(tmp_path), dataset="digits", image_size=32, batch_size=8,
                                          steps_per_epoch=2, epochs=1, eval_steps=1, warmup_epochs=0.5,
                                          drop_path_rate=0.2, log_every=1, ema_decay=0.5))
    result = train(cfg, spec)
    assert result.steps == 2 and np.isfinite(result.final["eval_loss"])
    trained = NetworkSpec.load(tmp_path / "spec.json")
    rates = [s.block.drop_path for s in trained.sites if s.block.has("drop_path")]
    assert rates[-1] == pytest.approx(0.2) and rates[0] == 0


def test_bfloat16_mixed_precision_step(tmp_path):
    from ran_keras.backend import keras
    from ran_keras.tasks.classification import ClassificationTask
    from ran_keras.train.trainer import Trainer
    cfg = tiny_cfg(tmp_path, dtype="bfloat16", epochs=1, steps_per_epoch=2)
    trainer = Trainer(cfg, ClassificationTask(cfg, tiny_spec()))
    result = trainer.run()
    assert result.steps == 2 and np.isfinite(result.final["eval_loss"])
    conv = trainer.model.get_layer("tiny_stem_block1_conv")
    assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")   # trained in mixed bfloat16
    assert keras.mixed_precision.global_policy().name == "float32"   # restored after the run


MIRRORED = textwrap.dedent("""
    import json, sys
    from ran_keras.experiments.train import run
    common = ["--recipe=digits", "--model=" + sys.argv[1], "--image_size=16", "--epochs=1", "--steps_per_epoch=3",
              "--eval_steps=2", "--strategy=mirrored", "--num_cpu_devices=2", "--log_every=1"]
    bad = run(["train", *common, "--batch_size=7", "--model_dir=" + sys.argv[2] + "/bad"])
    good = run(["train", *common, "--batch_size=8", "--model_dir=" + sys.argv[2] + "/good",
                "--json=" + sys.argv[2] + "/result.json"])
    print("RC", bad, good)
""")


def test_mirrored_strategy_over_two_cpu_devices(tmp_path):
    spec_path = tmp_path / "tiny.json"
    tiny_spec().save(spec_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(spec_path), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert "RC 2 0" in out, out[-3000:]
    assert "--batch_size=7 is not divisible by the 2 replicas of the mirrored strategy" in out
    assert "2 replica(s) on CPU:0, CPU:1; global batch 8 = 2 x 4 per replica" in out
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 3 and np.isfinite(result["final"]["eval_loss"])
    assert json.loads((tmp_path / "good" / "results.json").read_text())["replicas"] == 2
