"""The PReLU search: the lambda * sum(alpha - 1)^2 term, the decision rule, the derived spec, the run."""

import csv
import json

import pytest

from ran_keras.blocks import AFRB_BAND

from ran_keras.search import prelu
from ran_keras.train.config import resolve_config
from ran_keras.spec import BlockSpec, NetworkSpec, afrb_sites


def afrb_spec(name="tiny_super"):
    return NetworkSpec(name=name, activation="relu", input_size=16, bn_momentum=0.9, family="ran_e",
                       stem=(BlockSpec("conv", channels=8, kernel=3, stride=2, norm=None, activation="linear"),),
                       stages=((BlockSpec("afrb1", channels=8, expansion=2),
                                BlockSpec("afrb2", channels=8, expansion=2)),
                               (BlockSpec("afrb1", channels=16, expansion=4, stride=2, kernel=5),
                                BlockSpec("afrb3", channels=16, expansion=2))),
                       head=(BlockSpec("conv", channels=24, kernel=1),))


def search_cfg(model_dir, **kw):
    values = dict(model_dir=str(model_dir), image_size=16, batch_size=8, steps_per_epoch=2, epochs=2, eval_steps=1,
                  log_every=100, warmup_epochs=0)
    values.update(kw)
    return resolve_config("digits", values)


def test_penalty_equals_lambda_sum_squares_on_known_alphas():
    from ran_keras.backend import tf
    from ran_keras.registry import create_model
    spec = afrb_spec()
    model = create_model(spec, (16, 16, 3), classes=10)
    variables = prelu.alpha_variables(model, spec)
    assert [v.name.split("/")[0] for v in variables] == prelu.alpha_layer_names(spec) == [
        "tiny_super_stage1_block1_alpha", "tiny_super_stage1_block2_alpha", "tiny_super_stage2_block1_alpha",
        "tiny_super_stage2_block2_alpha"]
    values = [0.25, 1.0, 1.5, -0.5]
    for v, a in zip(variables, values):
        v.assign(a)
    with tf.GradientTape() as tape:
        penalty = prelu.alpha_penalty(variables, 0.3)
    expected = 0.3 * (0.75 ** 2 + 0 + 0.5 ** 2 + 1.5 ** 2)
    assert float(penalty) == pytest.approx(expected, rel=1e-6)
    grads = tape.gradient(penalty, variables)
    assert [float(g) for g in grads] == pytest.approx([2 * 0.3 * (a - 1) for a in values], rel=1e-6)


def test_decision_rule_band_is_inclusive():
    alphas = [0.79, 0.8, 1.0, 1.3, 1.31, -0.2]
    assert prelu.decide(alphas) == [False, True, True, True, False, False]
    assert prelu.decide(alphas, (0.9, 1.1)) == [False, False, True, False, False, False]
    for band in ((1.3, 0.8), (0.1, 0.5), (1.1, 2.0)):   # one rule with the rewriter: low <= 1 <= high
        with pytest.raises(prelu.SearchError, match="low <= 1 <= high"):
            prelu.decide(alphas, band)


def test_derived_spec_for_hand_set_alphas_is_exactly_the_expected_one():
    spec = afrb_spec()
    derived = prelu.derive_spec(spec, [0.95, 0.2, 1.35, 1.29], name="picked", input_size=32)
    expected = NetworkSpec(
        name="picked", activation="hard_swish", input_size=32, bn_momentum=0.9, family="ran_e",
        description=derived.description,
        stem=(BlockSpec("conv", channels=8, kernel=3, stride=2, norm=None, activation="linear"),),
        stages=((BlockSpec("collapsed", channels=8, kernel=3, stride=1, expansion=2),
                 BlockSpec("ibn", channels=8, kernel=3, stride=1, expansion=2)),
                (BlockSpec("ibn", channels=16, kernel=5, stride=2, expansion=4),
                 BlockSpec("collapsed", channels=16, kernel=3, stride=1, expansion=2, mid_channels=8))),
        head=(BlockSpec("conv", channels=24, kernel=1),))
    assert derived == expected
    assert "2 of 4 AFRBs collapsed" in derived.description
    assert not afrb_sites(derived)
    with pytest.raises(prelu.SearchError, match="has 4 AFRBs, got 3 alphas"):
        prelu.derive_spec(spec, [1, 1, 1])


def test_spec_without_afrbs_is_refused(tmp_path, capsys):
    from ran_keras.cli import main
    with pytest.raises(prelu.SearchError, match="resnet18 has no AFRB blocks"):
        prelu.run_search(search_cfg(tmp_path, model="resnet18"), lam=0.1)
    assert main(["search", "--model=ran_e_c", "--dataset=digits", f"--model_dir={tmp_path}"]) == 2
    assert "ran_e_c has no AFRB blocks" in capsys.readouterr().err
    assert main(["search", "--model=ran_e_supernet", "--band=1.3,0.8", f"--model_dir={tmp_path}"]) == 2
    assert "low <= 1 <= high" in capsys.readouterr().err
    with pytest.raises(prelu.SearchError, match="--lambda must be a number >= 0"):
        prelu.run_search(search_cfg(tmp_path), afrb_spec(), lam=float("nan"))


def test_demo_supernet_is_the_table5_layout():
    from ran_keras import get_spec
    demo, full = prelu.demo_supernet_spec(), get_spec("ran_e_supernet")
    assert [s.block.kind for s in afrb_sites(demo)] == [s.block.kind for s in afrb_sites(full)]
    assert len(afrb_sites(demo)) == 16 and demo.input_size == 32 and demo.total_stride == 16


def test_search_run_logs_alphas_and_writes_a_usable_spec(tmp_path, capsys):
    from ran_keras.backend import tf
    from ran_keras.cli import main
    from ran_keras.registry import create_model
    lines = []
    res = prelu.run_search(search_cfg(tmp_path), afrb_spec(), lam=0.5, band=(0.45, 1.3), log=lines.append,
                            fold=True)
    assert res.steps == 4 and len(res.alphas) == 4
    # one row per step (and the initial alphas), one column per AFRB; the last row is what was decided on
    with open(tmp_path / "alphas.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["step", "epoch"] + [s.prefix for s in afrb_sites(afrb_spec())]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2, 3, 4]
    assert [float(x) for x in rows[1][2:]] == [0.5] * 4
    assert [float(x) for x in rows[-1][2:]] == pytest.approx(res.alphas, abs=1e-6)
    assert all(a > 0.5 for a in res.alphas)                  # the penalty pulled every alpha towards 1
    assert (tmp_path / "alphas.png").stat().st_size > 1000
    tags = set()
    for event_file in (tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"):
        for raw in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            tags.update(v.tag for v in event.summary.value)
    assert {"alpha/stage1_block1", "alpha/stage2_block2", "alpha_penalty", "ce"} <= tags
    report = "\n".join(lines)
    assert "collapsed" in report and f"collapsed {res.collapsed} of 4 AFRBs" in report
    assert res.collapse == prelu.decide(res.alphas, (0.45, 1.3))
    # the rewriter folded the trained SuperNet's in-band AFRBs; that model was evaluated on the held-out split
    assert (tmp_path / "folded.keras").is_file() and 0 <= res.folded_accuracy <= 1 and res.folded_macs > 0
    # the derived spec JSON goes straight into the profiler, the builder and `ran profile`
    derived = NetworkSpec.load(tmp_path / "derived_spec.json")
    assert derived == res.derived and derived.input_size == 16
    create_model(str(tmp_path / "derived_spec.json"), classes=10)
    assert main(["profile", str(tmp_path / "derived_spec.json"), "--classes=10", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    prof = prof[0] if isinstance(prof, list) else prof
    assert prof["macs"] == res.macs
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["collapsed"] == res.collapsed and saved["derived_path"] == str(tmp_path / "derived_spec.json")
    assert [b["alpha"] for b in saved["blocks"]] == pytest.approx(res.alphas)


def test_logged_penalty_matches_alphas(tmp_path):
    from ran_keras.train import trainer
    captured = []

    class Capture(trainer.Callback):
        def on_train_begin(self, trainer):
            self.read = prelu.alpha_variables(trainer.model, afrb_spec())

        def on_step_end(self, trainer, step, logs):
            captured.append((logs["alpha_penalty"], [float(v.numpy()) for v in self.read]))

    from ran_keras.tasks.classification import ClassificationTask
    lam = 0.25
    cfg = search_cfg(tmp_path, epochs=1)
    probe = Capture()
    trainer.Trainer(cfg, ClassificationTask(cfg, afrb_spec()), transforms=[prelu.AlphaPenalty(afrb_spec(), lam)],
                    callbacks=[probe]).run()
    # step 1's penalty is computed on the initial alphas (all 0.5)
    assert captured[0][0] == pytest.approx(lam * 4 * 0.25, rel=1e-6)
    # step 2's penalty is computed on the alphas after step 1
    assert captured[1][0] == pytest.approx(lam * sum((a - 1) ** 2 for a in captured[0][1]), rel=1e-5)


def test_nan_during_search_stops_cleanly(tmp_path):
    from ran_keras.train import trainer
    from ran_keras.train.trainer import NonFiniteLossError

    class PoisonAlpha(trainer.Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 2:
                prelu.alpha_variables(trainer.model, afrb_spec())[0].assign(float("nan"))

    cfg = search_cfg(tmp_path, checkpoint_every=1)
    logger = prelu.AlphaLogger(afrb_spec(), tmp_path, AFRB_BAND)
    with pytest.raises(NonFiniteLossError, match="non-finite weights at step 2.*ckpt-1"):   # checked before saving
        trainer.train(cfg, afrb_spec(), transforms=[prelu.AlphaPenalty(afrb_spec(), 0.1)],
                      callbacks=[PoisonAlpha(), logger])
    rows = prelu.read_alpha_csv(tmp_path / "alphas.csv", 4)
    assert [r[0] for r in rows] == [0, 1, 2]                     # flushed and closed on the way out
    assert logger._fh is None and (tmp_path / "alphas.png").is_file()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".index")
    assert ckpts == ["ckpt-1.index"]                              # the poisoned step 2 was not saved


def test_lambda_sweep_writes_a_summary(tmp_path):
    results = prelu.run_sweep(search_cfg(tmp_path, epochs=1), afrb_spec(), lambdas=[0.0, 1.0], log=lambda _: None)
    assert [r.lam for r in results] == [0.0, 1.0]
    assert [r.model_dir for r in results] == [str(tmp_path / "lambda_0"), str(tmp_path / "lambda_1")]
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| lambda | collapsed |") and len(table) == 4
    assert [row["lambda"] for row in json.loads((tmp_path / "sweep.json").read_text())] == [0.0, 1.0]
    assert (tmp_path / "alphas_sweep.png").stat().st_size > 1000
    # same seed and batches: lambda = 1 pulls every alpha at least as far towards 1 as lambda = 0 does
    assert all(a1 >= a0 - 1e-6 for a0, a1 in zip(results[0].alphas, results[1].alphas))
    assert sum(results[1].alphas) > sum(results[0].alphas)


def test_width_is_applied_once_to_the_searched_supernet(tmp_path):
    """--width scales the SuperNet once: the model trained, search.json and derived_spec.json agree."""
    res = prelu.run_search(search_cfg(tmp_path, width=0.5, epochs=1, steps_per_epoch=1), afrb_spec(), lam=0.1,
                            log=lambda _: None)
    trained = NetworkSpec.load(tmp_path / "model.spec.json")     # written from the model that was trained
    assert trained.name == "tiny_super_w0.5" == res.supernet.name
    assert trained == res.supernet == NetworkSpec.load(tmp_path / "spec.json")
    assert [s.out_channels for s in afrb_sites(trained)] == [4, 4, 8, 8]      # 8, 8, 16, 16 at width 1
    derived = {s.path: s for s in NetworkSpec.load(tmp_path / "derived_spec.json").sites}
    assert [derived[s.path].out_channels for s in afrb_sites(trained)] == [4, 4, 8, 8]
    assert json.loads((tmp_path / "search.json").read_text())["supernet"] == "tiny_super_w0.5"


@pytest.mark.parametrize("args, message", [
    (["--lambdas=0.01,-1"], "--lambdas: each value must be a number >= 0, got -1.0"),
    (["--lambdas=0.01,x"], "--lambdas: 'x' is not a number"),
    (["--lambda=-1"], "--lambda must be a number >= 0, got -1.0"),
    (["--derived_activation=relu7"], "--derived_activation: unknown activation 'relu7' (did you mean 'relu'?)"),
    (["--lambdas=0,1", "--derived_activation=relu7"], "--derived_activation: unknown activation 'relu7'"),
    (["--derived_name=bad name"], "--derived_name: must start with a letter"),
    (["--lambdas=0,1", "--derived_name=mine"], "--derived_name=mine names the spec of a single search"),
    (["--demo", "--derived_name=mine"], "--derived_name=mine names the spec of a single search"),
])
def test_bad_search_flags_fail_before_training(tmp_path, capsys, args, message):
    from ran_keras.cli import main
    model = [] if "--demo" in args else [f"--model={tmp_path / 'super.json'}", "--recipe=digits", "--image_size=16"]
    afrb_spec().save(tmp_path / "super.json")
    assert main(["search", *model, f"--model_dir={tmp_path / 'run'}", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()                        # nothing was trained or written
