"""Recipes, configuration, learning-rate schedule and the absl flags of `ran train` / `ran search`."""

import math
import re

import pytest

from ran_keras.train import config
from ran_keras.train.config import ConfigError, TrainConfig, resolve_config


def test_ran_e_recipe_is_appendix_b():
    cfg = resolve_config("ran_e")
    assert (cfg.optimizer, cfg.learning_rate, cfg.lr_reference_batch) == ("rmsprop", 0.005, 768)
    assert (cfg.rho, cfg.momentum, cfg.epsilon) == (0.9, 0.9, 0.001)
    assert (cfg.schedule, cfg.warmup_epochs, cfg.weight_decay) == ("cosine", 5, 5e-6)
    assert (cfg.label_smoothing, cfg.augment, cfg.epochs) == (0.1, "autoaugment", 350)
    assert cfg.mixup == 0 and cfg.cutmix == 0 and not cfg.ema


def test_convnext_recipe():
    cfg = resolve_config("convnext")
    assert (cfg.optimizer, cfg.learning_rate, cfg.weight_decay, cfg.weight_decay_mode) == (
        "adamw", 4e-3, 0.05, "decoupled")
    assert (cfg.epochs, cfg.warmup_epochs, cfg.ema, cfg.mixup, cfg.cutmix) == (300, 20, True, 0.8, 1.0)
    assert cfg.augment == "randaugment" and cfg.label_smoothing == 0.1
    assert cfg.drop_path_rate is None   # per model, from the spec


def test_flags_override_recipe_and_lr_scales_linearly():
    cfg = resolve_config("ran_e", {"batch_size": 256, "epochs": 3, "augment": None})
    assert cfg.epochs == 3 and cfg.augment == "autoaugment"     # None = not given
    assert cfg.peak_learning_rate() == pytest.approx(0.005 * 256 / 768)
    assert resolve_config("ran_e", {"batch_size": 256, "lr_scaling": False}).peak_learning_rate() == 0.005


@pytest.mark.parametrize("overrides, flag", [
    ({"batch_size": 0}, "--batch_size"), ({"label_smoothing": 1.5}, "--label_smoothing"),
    ({"optimizer": "adagrad"}, "--optimizer"), ({"warmup_epochs": -1}, "--warmup_epochs"),
    ({"strategy": "tpu"}, "--strategy=tpu"), ({"crop_min_scale": 0}, "--crop_min_scale"),
    ({"dataset": "digits", "image_folder": "x"}, "--dataset"), ({"ema_decay": 1.0}, "--ema_decay: must be in (0, 1)"),
    ({"momentum": 1.0}, "--momentum: must be in [0, 1)"), ({"momentum": -0.1}, "--momentum: must be in [0, 1)"),
])
def test_bad_values_name_the_flag(overrides, flag):
    with pytest.raises(ConfigError, match=re.escape(flag)):
        resolve_config("ran_e", overrides)


def test_unknown_recipe_and_setting():
    with pytest.raises(ConfigError, match="did you mean 'ran_e'"):
        resolve_config("ran-e")
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        resolve_config("ran_e", {"epoch": 3})


def test_lr_schedule_values():
    from ran_keras.train.trainer import WarmupSchedule

    def lr(step, schedule="cosine", minimum=0.0, warmup=10):
        return float(WarmupSchedule(1.0, warmup, 110, schedule, minimum)(step))

    assert lr(0) == pytest.approx(0.1)          # warm-up step 0 is never 0
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5)          # half-way through the cosine
    assert lr(110) == pytest.approx(0.0, abs=1e-7)
    assert lr(200) == pytest.approx(0.0, abs=1e-7)
    assert lr(50, "constant") == 1.0 and lr(5, "constant") == pytest.approx(0.6)
    assert lr(110, minimum=0.1) == pytest.approx(0.1) and lr(60, minimum=0.1) == pytest.approx(0.55)
    assert lr(0, warmup=0) == pytest.approx(1.0) and lr(55, warmup=0) == pytest.approx(0.5)


def test_every_setting_is_a_flag_and_flags_reach_the_config():
    from ran_keras.experiments import flags as flags_lib
    from ran_keras.experiments import search  # noqa: F401 - search adds its flags to the same registry
    FLAGS = flags_lib.FLAGS
    for name in config.FIELDS:
        assert name in FLAGS, name
    try:
        FLAGS(["prog", "--recipe=convnext", "--epochs=2", "--noema", "--dataset=digits", "--lambda=0.5"])
        cfg = flags_lib.config_from_flags("ran_e")
        assert (cfg.optimizer, cfg.epochs, cfg.ema, cfg.dataset) == ("adamw", 2, False, "digits")
        assert FLAGS["lambda"].value == 0.5
    finally:
        FLAGS.unparse_flags()


def test_cli_help_and_bad_flags(capsys):
    from ran_keras.cli import main
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--recipe" in out and "--strategy" in out and "ran_e: 0.005" in out
    assert main(["search", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--lambdas" in out and "--band" in out
    assert main(["train", "--bogus=1"]) == 2
    assert "Unknown command line flag 'bogus'" in capsys.readouterr().err
    assert main(["train", "--dataset=digits", "--model_dir=/tmp/unused"]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_drop_path_rule_on_registered_convnext():
    from ran_keras import get_spec
    from ran_keras.tasks.classification import apply_drop_path
    spec = apply_drop_path(get_spec("convnext_tiny"), 0.3)
    rates = [s.block.drop_path for s in spec.sites if s.block.has("drop_path")]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)
    assert all(b >= a for a, b in zip(rates, rates[1:]))
    with pytest.raises(ConfigError, match="no blocks with a drop_path"):
        apply_drop_path(get_spec("ran_e_c"), 0.1)


def test_config_json_round_trip():
    cfg = resolve_config("digits", {"model_dir": "x"})
    import json
    assert TrainConfig(**json.loads(cfg.to_json())) == cfg
    assert math.isclose(cfg.peak_learning_rate(), 3e-3)
