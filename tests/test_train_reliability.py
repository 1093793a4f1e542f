"""What a training run promises: exact resume with dropout and stochastic depth, one run per folder,
no results from a non-finite evaluation, strict JSON, checkpoint fallback, multi-worker training."""

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ran_keras import fileio
from ran_keras.errors import ConfigError
from ran_keras.runlock import FolderLock
from ran_keras.spec import BlockSpec, NetworkSpec

from test_train_loop import RaiseAt, tiny_cfg, tiny_spec


def dropout_spec():
    """Dropout before the classifier and stochastic depth in a ConvNeXt block, both at 0.5."""
    return NetworkSpec(name="tiny_drop", activation="hard_swish", input_size=16, bn_momentum=0.9,
                       classifier_dropout=0.5,
                       stem=(BlockSpec("conv", channels=8, kernel=3, stride=2),),
                       stages=((BlockSpec("afrb1", channels=8, expansion=2),
                                BlockSpec("convnext", channels=8, kernel=3, expansion=2, drop_path=0.5)),
                               (BlockSpec("ibn", channels=12, expansion=2, stride=2),)))


def metrics_rows(folder):
    with open(folder / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def weights(folder):
    from ran_keras.builder import load_model
    return load_model(folder / "model.keras").get_weights()


# --- exact resume, of a search killed mid-epoch --------------------------------------------------------------

KILLED_SEARCH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from ran_keras.search import prelu
    from test_train_loop import tiny_cfg
    from test_train_reliability import dropout_spec
    logged = prelu.AlphaLogger.on_step_end
    def dying(self, trainer, step, logs):
        logged(self, trainer, step, logs)
        if step == 5:
            os._exit(9)   # like a kill: nothing flushed, no clean-up
    prelu.AlphaLogger.on_step_end = dying
    prelu.run_search(tiny_cfg(sys.argv[1], checkpoint_every=2, log_every=1), dropout_spec(), lam=0.01, log=print)
""")


def search_cfg(folder):
    return tiny_cfg(folder, checkpoint_every=2, log_every=1)


@pytest.fixture(scope="module")
def dropout_runs(tmp_path_factory):
    """The same 6-step search of a model with dropout and drop path: uninterrupted, and killed at step 5
    (checkpoint at 4) then resumed."""
    from ran_keras.search.prelu import run_search
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    run_search(search_cfg(straight), dropout_spec(), lam=0.01, log=lambda _: None)
    proc = subprocess.run([sys.executable, "-c", KILLED_SEARCH, str(resumed), os.path.dirname(__file__)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 9, (proc.stdout + proc.stderr)[-2000:]
    after_kill = tensorboard_scalars(resumed / "tensorboard" / "train")
    said = []
    result = run_search(search_cfg(resumed), dropout_spec(), lam=0.01, log=said.append)
    assert "resumed from " in "\n".join(said) and result.steps == 6
    return straight, resumed, after_kill


def tensorboard_scalars(folder):
    from ran_keras.backend import tf
    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(record)
            for value in event.summary.value:
                out.append((value.tag, event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(out)


def test_resume_with_dropout_and_drop_path_is_exact(dropout_runs):
    straight, resumed, _ = dropout_runs
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    rows_a, rows_b = metrics_rows(straight), metrics_rows(resumed)
    assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b] and len(rows_a) == 2
    for ra, rb in zip(rows_a, rows_b):   # the resumed epoch's row covers all its steps
        np.testing.assert_allclose([float(v or 0) for v in ra.values()], [float(v or 0) for v in rb.values()],
                                   rtol=1e-5)


def test_a_killed_search_resumes_with_the_logs_of_an_uninterrupted_one(dropout_runs):
    from ran_keras.search.prelu import read_alpha_csv
    straight, resumed, after_kill = dropout_runs
    assert max(step for _, step, _ in after_kill) == 5   # the kill left step 5 in the logs
    a, b = (np.array(read_alpha_csv(d / "alphas.csv", 1)) for d in (straight, resumed))
    assert list(b[:, 0]) == list(a[:, 0]) == list(range(7))
    np.testing.assert_allclose(a, b, atol=2e-6)
    for part in ("train", "eval"):
        ta, tb = (tensorboard_scalars(d / "tensorboard" / part) for d in (straight, resumed))
        assert [t[:2] for t in ta] == [t[:2] for t in tb]   # each (tag, step) once, none missing
        np.testing.assert_allclose([t[2] for t in ta], [t[2] for t in tb], rtol=1e-4, atol=1e-6)


def test_dropout_masks_depend_on_step_and_layer_not_on_the_process():
    from ran_keras.backend import tf
    from ran_keras.train.seeds import StepSeededMasks, layer_key
    step = tf.Variable(0, dtype=tf.int64)
    ones = tf.ones((64, 4))
    masks = StepSeededMasks(layer_key(0, "a"), step.read_value)
    first = masks.dropout(ones, 0.5).numpy()
    np.testing.assert_array_equal(first, masks.dropout(ones, 0.5).numpy())         # same step: same mask
    assert set(np.unique(first)) == {0.0, 2.0}
    other_layer = StepSeededMasks(layer_key(0, "b"), step.read_value).dropout(ones, 0.5).numpy()
    step.assign(1)
    assert not np.array_equal(first, masks.dropout(ones, 0.5).numpy())            # next step: another mask
    assert not np.array_equal(first, other_layer)


@pytest.mark.parametrize("change, message", [
    ({"epochs": 3}, "--epochs was 2, now 3"),
    ({"learning_rate": 0.02}, "--learning_rate was 0.01, now 0.02"),
])
def test_resume_refuses_a_changed_schedule(dropout_runs, change, message):
    from ran_keras.train.trainer import train
    _, resumed, _ = dropout_runs
    before = (resumed / "config.json").read_text()
    with pytest.raises(ConfigError, match=re.escape(f"cannot resume {resumed}: {message}")):
        train(tiny_cfg(resumed, checkpoint_every=2, **change), dropout_spec())
    assert (resumed / "config.json").read_text() == before


# --- one run per folder --------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys
    from ran_keras.runlock import FolderLock
    lock = FolderLock(sys.argv[1]).acquire()
    print("HELD", flush=True)
    sys.stdin.read()
""")


def test_a_second_run_in_a_locked_folder_is_refused_with_the_first_ones_pid(tmp_path):
    from ran_keras.train.trainer import train
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(ConfigError, match=rf"is in use by another run \(process {holder.pid} on "):
            train(tiny_cfg(tmp_path), tiny_spec())
        assert not (tmp_path / "config.json").exists()
    finally:
        holder.communicate("", timeout=30)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "HELD"
    holder.kill()
    holder.wait(timeout=30)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid   # left behind
    said = []
    with FolderLock(tmp_path, log=said.append):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(ConfigError, match=rf"process {os.getpid()} "):
            FolderLock(tmp_path).acquire()   # held: even a second lock in the same process is refused
    assert said and f"left by process {holder.pid}" in said[0]
    with FolderLock(tmp_path, log=said.append):   # released cleanly: nothing stale to report
        pass
    assert len(said) == 1


def test_a_folder_that_cannot_hold_a_lock_is_refused_clearly(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match=rf"--model_dir={re.escape(str(path))}: cannot create its lock file"):
        FolderLock(path).acquire()


# --- non-finite evaluation, strict JSON ----------------------------------------------------------------

def test_non_finite_evaluation_loss_stops_the_run_and_writes_no_results(tmp_path):
    from ran_keras.train.trainer import Callback, NonFiniteLossError, train

    class BreakBatchNorm(Callback):   # negative moving variances: finite weights, NaN at evaluation only
        def on_step_end(self, trainer, step, logs):
            if step == 3:
                for v in trainer.model.variables:
                    if "moving_variance" in v.name:
                        v.assign(-np.ones(v.shape, np.float32))

    with pytest.raises(NonFiniteLossError, match=r"non-finite evaluation loss \(nan\) after step 3") as err:
        train(tiny_cfg(tmp_path), tiny_spec(), callbacks=[BreakBatchNorm()])
    assert err.value.checkpoint.endswith("ckpt-3") and "the checkpoint of this step" in str(err.value)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "model.keras").exists()


def test_json_is_written_strictly_or_not_at_all(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(fileio.NonFiniteJSONError, match=r"final\.eval_loss=nan"):
        fileio.write_json(path, {"final": {"eval_loss": float("nan"), "eval_accuracy": 0.5}})
    assert not path.exists() and not list(tmp_path.iterdir())
    fileio.write_json(path, {"a": [1.5, None]})
    assert json.loads(path.read_text()) == {"a": [1.5, None]}


# --- checkpoints -----------------------------------------------------------------------------------------

def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(dropout_runs, tmp_path):
    import shutil
    from ran_keras.search.prelu import run_search
    from ran_keras.train.trainer import train
    straight, _, _ = dropout_runs
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    for name in ("model.keras", "results.json"):
        (run / name).unlink()
    data = run / "checkpoints" / "ckpt-6.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])   # truncated
    said = []
    result = run_search(search_cfg(run), dropout_spec(), lam=0.01, log=said.append)
    warning = next(line for line in said if line.startswith("warning:"))
    assert "ckpt-6 is damaged" in warning and "resuming from the newest intact one" in warning
    assert "ckpt-4 (step 4)" in warning and "delete" not in warning
    assert any(line.startswith(f"resumed from {run}/checkpoints/ckpt-4 at step 4") for line in said)
    assert result.steps == 6
    for a, b in zip(weights(straight), weights(run)):   # and still exact: steps 5-6 trained again
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # every checkpoint damaged: refused before any step, naming each
    for index in (run / "checkpoints").glob("*.index"):
        index.write_bytes(b"not a checkpoint index")
    with pytest.raises(ConfigError, match=r"no checkpoint in .* reads back whole \(.*ckpt-6: .*ckpt-4: .*ckpt-2: "):
        train(tiny_cfg(run, checkpoint_every=2), dropout_spec())


# --- multi-worker training -------------------------------------------------------------------------------

def free_ports(count):
    import socket
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_cluster(args, timeout=240):
    """``ran train ARGS`` as a two-worker cluster on 127.0.0.1 (one process per worker); [(rc, output)]."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-m", "ran_keras", "train", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    out = []
    try:
        for proc in procs:
            text, _ = proc.communicate(timeout=timeout)
            out.append((proc.returncode, text))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


@pytest.mark.slow
def test_two_worker_training_on_localhost_finishes_with_chief_and_worker_roles(tmp_path):
    spec_path = tmp_path / "tiny.json"
    tiny_spec().save(spec_path)
    run = tmp_path / "run"
    args = ["--recipe=digits", f"--model={spec_path}", "--image_size=16", "--epochs=2", "--steps_per_epoch=2",
            "--eval_steps=2", "--batch_size=8", "--strategy=multi_worker_mirrored", "--log_every=1",
            f"--model_dir={run}", f"--json={tmp_path / 'result.json'}"]
    (rc0, chief), (rc1, worker) = run_cluster(args)
    assert (rc0, rc1) == (0, 0), chief[-3000:] + "\n-----\n" + worker[-3000:]
    assert "2 replica(s) on CPU:0 of each task in a cluster of 2 (worker 0 at 127.0.0.1:" in chief
    assert "this is worker 0 (the chief: it writes the run folder)" in chief
    assert re.search(r"this is worker 1; global batch 8 = 2 x 4 per replica", worker)
    assert "step 4/4" in chief and "step 4/4" in worker   # every step logged by both
    result = json.loads((run / "results.json").read_text())   # the chief's outputs, once
    assert result["steps"] == 4 and result["replicas"] == 2 and np.isfinite(result["final"]["eval_loss"])
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 4
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "checkpoints", "config.json", "metrics.csv", "model.keras", "model.spec.json", "results.json",
        "spec.json", "tensorboard"]                       # no worker folders in the run
    # run again: both workers restore the chief's last checkpoint (a worker starting from 0 would hang)
    (rc0, chief), (rc1, worker) = run_cluster(args)
    assert (rc0, rc1) == (0, 0), chief[-3000:] + "\n-----\n" + worker[-3000:]
    assert f"resumed from {run}/checkpoints/ckpt-4 at step 4" in chief and "already trained to step 4" in worker


def test_outputs_are_replaced_whole_or_left_as_they_were(tmp_path):
    path = tmp_path / "results.json"
    fileio.write_json(path, {"run": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(path) as tmp:
            tmp.write_text('{"run": 2, "trunc')
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"run": 1} and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("tf_config", ["not json", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
                                                    '"index": 1}}', '{"task": {"type": "worker", "index": 0}}'])
def test_a_tf_config_that_is_no_cluster_is_refused_before_tensorflow_starts(monkeypatch, tf_config):
    from ran_keras.train.config import resolve_config
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=r"TF_CONFIG=.* is not a cluster description: "
                                          r"--strategy=multi_worker_mirrored needs JSON like"):
        resolve_config("digits", {"strategy": "multi_worker_mirrored"})
    resolve_config("digits", {"strategy": "mirrored"})   # only the multi-worker strategy reads it
