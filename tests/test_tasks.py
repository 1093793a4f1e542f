"""A second task through the same loop: a digit's value regressed from its image, with a host-side
R^2 over each evaluation pass, model transforms (a loss term, a wrapper) and exact resume."""

import csv
import json

import numpy as np
import pytest

from ran_keras.spec import BlockSpec, NetworkSpec
from ran_keras.tasks.base import Task, TaskError
from ran_keras.train.config import ConfigError, resolve_config
from ran_keras.train.trainer import Callback, Trainer
from ran_keras.train.transforms import ModelTransform

EVAL_EXAMPLES = 360   # scikit-learn digits' stratified 20%


def toy_spec():
    return NetworkSpec(name="toy", activation="relu", input_size=16, input_channels=1, input_mean=(0.5,),
                       input_std=(0.5,), bn_momentum=0.9,
                       stem=(BlockSpec("conv", channels=8, kernel=3, stride=2),),
                       stages=((BlockSpec("conv", channels=12, kernel=3, stride=2),),))


class DigitValue(Task):
    """Regress value / 9 of a scikit-learn digit at 16x16: MSE loss, MAE metric, R^2 over the pass."""

    name = "digit_value"

    def __init__(self, cfg, spec=None):
        super().__init__(cfg)
        self.spec = spec or toy_spec()

    def setup(self, strategy):
        from ran_keras.data.classification import digits_arrays
        (self.x_tr, y_tr), (self.x_ev, y_ev) = digits_arrays()
        self.y_tr, self.y_ev = (y_tr[:, None] / 9).astype(np.float32), (y_ev[:, None] / 9).astype(np.float32)
        self.train_examples, self.data_name = len(self.x_tr), "digits"

    def build_model(self):
        from ran_keras.registry import create_model
        return create_model(self.spec, (16, 16, 1), classes=1, classifier_activation=None, seed=self.cfg.seed)

    def build_inputs(self, training, epoch=0, skip=0):
        from ran_keras.backend import tf
        ds = tf.data.Dataset.from_tensor_slices((self.x_tr, self.y_tr) if training else (self.x_ev, self.y_ev))
        if training:
            seed = self.cfg.seed * 1000 + epoch
            ds = ds.shuffle(len(self.x_tr), seed=seed, reshuffle_each_iteration=False).repeat().skip(skip)
        ds = ds.map(lambda x, y: (tf.image.resize(tf.cast(x, tf.float32) / 127.5 - 1.0, [16, 16]), y))
        return ds.batch(self.cfg.batch_size, drop_remainder=training)

    def build_losses(self, labels, outputs, model, training=True):
        from ran_keras.backend import tf
        mse = tf.nn.compute_average_loss(tf.reduce_mean(tf.square(outputs - labels), axis=-1),
                                         global_batch_size=self.cfg.batch_size)
        return mse, {"mse": mse}

    def build_metrics(self, training):
        from ran_keras.backend import keras
        return [keras.metrics.MeanAbsoluteError("mae")]

    def aggregate_logs(self, state, labels, outputs):
        state = state or ([], [])
        state[0].append(labels)
        state[1].append(outputs)
        return state

    def reduce_aggregated_logs(self, state):
        y, p = (np.concatenate(part)[:, 0] for part in state)
        return {"r2": 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2), "examples": len(y)}

    def fingerprint(self):
        return dict(self.spec.to_dict(), task=self.name)

    def result_fields(self):
        return {"dataset": self.data_name}


class Wrap(ModelTransform):
    """Wraps the model in a new functional model with an extra identity layer; notes it at export."""

    def __init__(self):
        super().__init__("wrap")

    def apply(self, model):
        from ran_keras.backend import keras
        out = keras.layers.Activation("linear", name="wrap_identity")(model.output)
        return keras.Model(model.input, out, name=model.name)

    def export(self, model, model_dir):
        (model_dir / "wrapped.txt").write_text(model.layers[-1].name)


def conv_l2():
    """A loss term over the weights, as callables: 1e-3 * sum of squared conv kernels."""
    def loss(model):
        from ran_keras.backend import tf
        return 1e-3 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in model.trainable_variables if len(v.shape) == 4])
    return ModelTransform("conv_l2", loss=loss)


def toy_cfg(model_dir, **kw):
    values = dict(model_dir=str(model_dir), batch_size=16, steps_per_epoch=3, epochs=2, optimizer="adam",
                  learning_rate=3e-3, lr_scaling=False, warmup_epochs=0, log_every=100)
    values.update(kw)
    return resolve_config(None, values)


class Steps(Callback):
    """Records each step's logs; raises at ``stop``."""

    def __init__(self, stop=None):
        self.stop, self.logs = stop, {}

    def on_step_end(self, trainer, step, logs):
        self.logs[step] = dict(logs)
        if step == self.stop:
            raise KeyboardInterrupt(f"stop at {step}")


def run(cfg, stop=None):
    steps = Steps(stop)
    trainer = Trainer(cfg, DigitValue(cfg), transforms=[conv_l2(), Wrap()], callbacks=[steps], log=lambda _: None)
    return trainer, trainer.run(), steps


def csv_rows(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_straight")
    trainer, result, steps = run(toy_cfg(out))
    return trainer, result, steps, out


def test_second_task_trains_through_the_loop(straight):
    from ran_keras.builder import load_model
    trainer, result, steps, out = straight
    assert result.steps == 6 and result.model == "toy"
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,step,learning_rate,train_loss,train_mae,eval_loss,eval_mae,eval_r2,eval_examples,seconds"
    assert {"loss", "mse", "grad_norm", "conv_l2", "learning_rate"} <= set(steps.logs[1])
    # the exported model is the wrapped one; the wrapper's export ran after the task's
    model = load_model(out / "model.keras")
    assert model.layers[-1].name == "wrap_identity" == (out / "wrapped.txt").read_text()
    # every evaluation batch (the last one partial) reached the host: R^2, loss and MAE over all 360
    x = np.concatenate([features.numpy() for features, _ in trainer.task.build_inputs(False)])
    pred, y = model.predict(x, verbose=0)[:, 0], trainer.task.y_ev[:, 0]
    final = result.final
    assert final["eval_examples"] == EVAL_EXAMPLES == len(pred)
    assert final["eval_r2"] == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2), abs=1e-4)
    assert final["eval_loss"] == pytest.approx(np.mean((y - pred) ** 2), rel=1e-4)
    assert final["eval_mae"] == pytest.approx(np.mean(np.abs(y - pred)), rel=1e-4)
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"] == "digits" and saved["final"]["eval_r2"] == pytest.approx(final["eval_r2"])
    assert json.loads((out / "spec.json").read_text())["task"] == "digit_value"


def test_second_task_resumes_exactly(straight, tmp_path):
    ref, _, ref_steps, ref_dir = straight
    cfg = toy_cfg(tmp_path, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, stop=5)
    trainer, result, steps = run(cfg)
    assert result.resumed_from == 4 and result.steps == 6 and sorted(steps.logs) == [5, 6]
    for a, b in zip(ref.model.get_weights(), trainer.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert steps.logs[6]["conv_l2"] == ref_steps.logs[6]["conv_l2"]
    assert trainer.model.layers[-1].name == "wrap_identity"
    # the resumed epoch's running train metrics came back with the checkpoint
    assert csv_rows(tmp_path / "metrics.csv") == csv_rows(ref_dir / "metrics.csv")


def test_task_registry_and_names(tmp_path):
    from ran_keras import tasks
    with pytest.raises(ConfigError, match=r"--task: unknown task 'clasification' \(did you mean 'classification'"):
        resolve_config(None, {"task": "clasification"})
    tasks.register_task(DigitValue.name, DigitValue)
    try:
        cfg = resolve_config(None, {"task": DigitValue.name, "model_dir": str(tmp_path)})
        assert isinstance(tasks.make_task(cfg), DigitValue)
    finally:
        tasks.TASKS.pop(DigitValue.name)

    class Clash(DigitValue):
        def build_metrics(self, training):
            from ran_keras.backend import keras
            return [keras.metrics.Mean("loss")]

    cfg = toy_cfg(tmp_path / "clash")
    with pytest.raises(TaskError, match="metric names must be unique and not 'loss'"):
        Trainer(cfg, Clash(cfg)).run()
