"""Bad input, damaged files and commands that cannot fit: one clear line, before any work (issue 16).

One test per class: memory estimates, damaged or foreign files, checks before work, and the
small ones (suggestions, file names in spec errors, recipe data sources, short calibration sets,
unmet scale budgets, plain Keras loaders). ``ran hwtable``'s partial failure is in test_hwtable.py.
"""

import json
import subprocess
import sys
import types

import pytest

from ran_keras.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)


# --- memory ----------------------------------------------------------------------------------------

def test_memory_estimates_follow_the_settings(monkeypatch):
    import ran_keras
    from ran_keras.analysis import memory
    spec = ran_keras.get_spec("ran_e_a")
    small = memory.training(spec, image_size=32, classes=10, batch_size=100)
    big = memory.training(spec, image_size=32, classes=10, batch_size=1000)
    assert big.parts["activations"] == 10 * small.parts["activations"] > 0
    assert big.parts["weights, gradients and optimizer state"] == small.parts["weights, gradients and optimizer state"]
    assert memory.training(spec, image_size=32, classes=10, batch_size=100, dtype="bfloat16").parts[
        "activations"] * 2 == small.parts["activations"]
    exp = memory.export(spec, image_size=32, classes=10, samples=1000)
    assert exp.parts["calibration images"] == 1000 * 32 * 32 * 3 * 5
    memory.check(big, {}, "--override", available=big.total)  # fits exactly
    with pytest.raises(memory.MemoryEstimateError, match=r"^--batch_size: training ran_e_a at 32x32, batch 1000 "
                                                         r"needs about .* lower --batch_size, or pass --override"):
        memory.check(big, {"activations": "--batch_size"}, "--override", available=big.total - 1)
    assert memory.available_bytes() > 0
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert memory.cluster_workers() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert not memory.accelerator_present()


def test_commands_that_cannot_fit_are_refused_before_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # a CPU run: host memory holds the activations
    # the batch check holds with --steps_per_epoch too (the "batch larger than the data" check does not)
    code, _, err = run(capsys, "train", "--recipe=digits", "--model=ran_e_a", "--steps_per_epoch=3",
                       "--batch_size=100000000", f"--model_dir={tmp_path / 'run'}")
    assert code == 2 and one_line(err) and "--batch_size: training ran_e_a at 32x32, batch 100000000 needs" in err
    assert "--nomemory_check" in err and not (tmp_path / "run").exists()
    code, _, err = run(capsys, "export", "ran_e_gt", "--samples", "1000000000", "-o", tmp_path / "x.tflite")
    assert code == 2 and one_line(err) and "--samples: exporting ran_e_gt at 224x224 with 1000000000" in err
    huge = json.loads(json.dumps(__import__("ran_keras").get_spec("ran_e_gt").to_dict()))
    huge["name"], huge["stages"][-1][-1]["channels"] = "huge", 1_000_000
    (tmp_path / "huge.json").write_text(json.dumps(huge))
    code, _, err = run(capsys, "export", tmp_path / "huge.json", "-o", tmp_path / "x.tflite")
    assert code == 2 and "the model's size: exporting huge" in err and "--no-memory-check" in err
    code, _, err = run(capsys, "hwtable", "--samples", "1000000000", "--output-dir", tmp_path / "hw")
    assert code == 2 and "--samples:" in err and "2 at once (--jobs)" in err
    # the override skips the estimate: the (stand-in) trainer is reached
    import ran_keras.train
    from ran_keras.errors import RanError
    fake = types.ModuleType("ran_keras.train.trainer")
    fake.NonFiniteLossError = type("NonFiniteLossError", (RanError,), {})

    def reached(cfg, spec):
        raise RanError(f"trainer reached with batch {cfg.batch_size}")
    fake.train = reached
    monkeypatch.setitem(sys.modules, "ran_keras.train.trainer", fake)
    monkeypatch.setattr(ran_keras.train, "trainer", fake, raising=False)
    code, _, err = run(capsys, "train", "--recipe=digits", "--model=ran_e_a", "--batch_size=100000000",
                       "--nomemory_check", f"--model_dir={tmp_path / 'run'}")
    assert code == 2 and "trainer reached with batch 100000000" in err


# --- damaged or foreign files -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory, keras):
    """A real .tflite and .keras of a tiny model, a subclassed model's .keras, and damaged copies."""
    from ran_keras.export.tflite import to_tflite
    folder = tmp_path_factory.mktemp("damaged")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    (folder / "ok.tflite").write_bytes(to_tflite(model, None, int8=False))
    model.save(folder / "ok.keras")

    class Subclassed(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)
    sub = Subclassed()
    sub(keras.Input((3,)))
    sub.save(folder / "subclassed.keras")
    for name in ("ok.tflite", "ok.keras"):
        data = (folder / name).read_bytes()
        (folder / f"cut{name[2:]}").write_bytes(data[:len(data) // 2])
    (folder / "text.keras").write_text("not a model\n")
    (folder / "text.h5").write_text("not a model\n")
    (folder / "binary.json").write_bytes(bytes(range(256)) * 4)
    return folder


@pytest.mark.parametrize("argv, message", [
    (["vela", "{d}/cut.tflite", "-t", "u55-128"], "{d}/cut.tflite: truncated or damaged TFLite flatbuffer"),
    (["bench-cpu", "{d}/cut.tflite", "--runs", "1"], "{d}/cut.tflite: truncated or damaged TFLite flatbuffer"),
    (["profile", "{d}/cut.keras"], "{d}/cut.keras: not a zip archive"),
    (["profile", "{d}/text.keras"], "expected a .keras model archive written by model.save()"),
    (["export", "{d}/text.h5"], "{d}/text.h5: not an HDF5 file (no HDF5 signature)"),
    (["profile", "{d}/subclassed.keras"], "subclassed models cannot be rebuilt from a file"),
    (["spec", "{d}/binary.json"], "{d}/binary.json: not a text file (byte 128 is not UTF-8); expected a ran-keras "
                                  "spec JSON"),
])
def test_damaged_and_foreign_files_are_one_line_naming_file_and_expectation(saved, capsys, tmp_path, argv, message):
    argv = [a.format(d=saved) for a in argv] + (["--output-dir", str(tmp_path)] if argv[0] == "vela" else [])
    code, _, err = run(capsys, *argv)
    assert code == 2 and one_line(err) and message.format(d=saved) in err, err


def test_ran_eval_names_a_damaged_tflite(saved, capsys, tmp_path):
    from PIL import Image
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "0.png")
    code, _, err = run(capsys, "eval", "--model", saved / "cut.tflite", "--image_folder", tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"ran eval: error: {saved}/cut.tflite: truncated or damaged TFLite")


def test_the_intact_files_load(saved, capsys):
    from ran_keras.export.flatbuffer import inspect_tflite
    assert inspect_tflite(saved / "ok.tflite").ops
    code, out, _ = run(capsys, "profile", saved / "ok.keras")
    assert code == 0 and "MACs by kind: conv 0, depthwise 0, dense 768" in out


def test_model_dir_that_is_a_file_or_not_writable(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for model_dir, message in ((afile, "is a file; expected a folder"),
                               (afile / "sub", "is a file, not a folder"),
                               ("/proc/ran_keras_run", "cannot write in '/proc'")):
        code, _, err = run(capsys, "train", "--recipe=digits", "--model=ran_e_a", f"--model_dir={model_dir}")
        assert code == 2 and one_line(err) and f"--model_dir '{model_dir}'" in err and message in err, err


# --- checks before work ----------------------------------------------------------------------------

def test_settings_and_outputs_are_checked_before_tensorflow_starts():
    code = ("import sys, time\nfrom ran_keras.cli import main\n"
            "t = time.perf_counter()\n"
            "codes = [main(['train', '--recipe=digits', '--model=ran_e_a', '--batch_size=0']),\n"
            "         main(['export', 'ran_e_gt', '-o', '/proc/ran_keras/x.tflite']),\n"
            "         main(['vela', 'ran_e_gt', '--output-dir', '/proc/ran_keras']),\n"
            "         main(['profile', 'ran_e_gt', '--json', '/proc/ran_keras/p.json']),\n"
            "         main(['train', '--recipe=digits', '--model=ran_e_a'])]\n"
            "print(codes, 'tensorflow' in sys.modules, time.perf_counter() - t)\n")
    proc = fresh_python(code)
    codes, tf_loaded, seconds = proc.stdout.split("]")[0] + "]", *proc.stdout.split("]")[1].split()
    assert codes == "[2, 2, 2, 2, 2]" and tf_loaded == "False", proc.stderr
    err = proc.stderr.splitlines()
    assert err == ["ran train: error: --batch_size: must be a positive integer, got 0",
                   "ran export: error: --output '/proc/ran_keras/x.tflite': cannot write in '/proc' (No such file "
                   "or directory); choose a writable location",
                   "ran vela: error: --output-dir '/proc/ran_keras': cannot write in '/proc' (No such file or "
                   "directory); choose a writable location",
                   "ran profile: error: --json '/proc/ran_keras/p.json': cannot write in '/proc' (No such file or "
                   "directory); choose a writable location",
                   "ran train: error: --model_dir is required (checkpoints, logs and the final model go there; "
                   "re-running with the same folder resumes)"]


def test_input_std_is_checked_by_the_parser_and_the_library(capsys):
    with pytest.raises(SystemExit):
        main(["export", "ran_e_gt", "--input-std", "0"])
    assert "argument --input-std: expected positive numbers" in capsys.readouterr().err
    from ran_keras.export import calibration
    from ran_keras.export.errors import CalibrationError
    with pytest.raises(CalibrationError, match=r"input std must be positive .*got \[0.0\]"):
        calibration.calibration_set("random", 1, 8, std=[0.0])
    spec = type("S", (), {"input_mean": (127.5,), "input_std": (1e-38,)})
    with pytest.raises(CalibrationError, match=r"turn the calibration images into inf/NaN"):
        calibration.calibration_set("random", 1, 8, spec=spec)


def test_an_output_that_cannot_be_written_names_the_file_not_a_temporary_one(tmp_path):
    from ran_keras import fileio
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match=f"cannot write '{blocker}/x.json'"):
        fileio.write_text(blocker / "x.json", "{}")


# --- the smaller ones ------------------------------------------------------------------------------

def test_plain_keras_loaders_rebuild_ran_keras_layers(tmp_path):
    import ran_keras
    spec = {"name": "tiny_hswish", "activation": "hard_swish", "head": [],
            "stem": [{"kind": "conv", "channels": 4, "kernel": 3, "stride": 2}],
            "stages": [[{"kind": "ibn", "channels": 4, "expansion": 2}]]}
    ran_keras.create_model(spec, input_shape=(8, 8, 3), classes=4).save(tmp_path / "m.keras")
    code = ("import ran_keras, tf_keras\n"
            f"m = tf_keras.models.load_model({str(tmp_path / 'm.keras')!r})\n"
            "print(sorted({type(l).__module__ for l in m.layers if 'ran_keras' in type(l).__module__}), "
            "m.output_shape)\n")
    proc = fresh_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['ran_keras.layers.hard_swish']", "(None,", "4)"]


def test_suggestions_fold_case_and_complete_prefixes(capsys):
    from ran_keras.export import vela
    from ran_keras.export.errors import UnknownTargetError
    with pytest.raises(UnknownTargetError, match=r"unknown target 'u55' \(did you mean 'u55-128'\?\)"):
        vela.resolve_target("u55")
    code, _, err = run(capsys, "profile", "RAN_E_GT")
    assert code == 2 and "Did you mean: ran_e_gt," in err


def test_spec_errors_name_the_file_and_read_well(tmp_path):
    import ran_keras
    spec = ran_keras.get_spec("ran_e_gt").to_dict()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(dict(spec, bn_epsilon=0)))
    with pytest.raises(ran_keras.SpecError) as err:
        ran_keras.NetworkSpec.load(path)
    assert str(err.value) == f"{path}: bn_epsilon: must be a positive number, got 0"
    path.write_text("{")
    with pytest.raises(ran_keras.SpecError, match=f"^{path}: the file is not valid JSON"):
        ran_keras.resolve_spec(str(path))


def test_a_data_source_given_replaces_the_recipe_s():
    from ran_keras.errors import ConfigError
    from ran_keras.train.config import resolve_config
    cfg = resolve_config("digits", {"image_folder": "photos/"})
    assert (cfg.dataset, cfg.image_folder, cfg.image_size) == (None, "photos/", 32)
    with pytest.raises(ConfigError, match="give either --dataset or --image_folder, not both"):
        resolve_config("digits", {"image_folder": "photos/", "dataset": "digits"})


def test_fewer_calibration_images_than_samples_warns(tmp_path):
    from PIL import Image
    from ran_keras.export import calibration
    for i in range(2):
        Image.new("RGB", (12, 12), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
    with pytest.warns(calibration.CalibrationWarning, match=r"gave 2 image\(s\), fewer than the 8 asked for"):
        images, info = calibration.calibration_set(f"folder:{tmp_path}", 8, 8)
    assert len(images) == info["count"] == 2 and info["requested"] == 8


def test_scale_exits_non_zero_when_a_budget_is_not_met(capsys):
    code, out, err = run(capsys, "scale", "--base", "convnext_tiny", "--macs", "1e3", "--samples", "20")
    assert code == 1 and "none to rank" in out
    assert "ran scale: error: no candidate meets budget H1 (1 of 1" in err
    code, _, _ = run(capsys, "scale", "--base", "convnext_tiny", "--macs", "4e9", "--tolerance", "50%",
                     "--samples", "20")
    assert code == 0


def test_errors_survive_the_trip_back_from_a_worker_process():
    """ran hwtable's conversion workers send errors back pickled; one that cannot be rebuilt would
    break the whole pool instead of marking one row."""
    import pickle
    from ran_keras.errors import FileFormatError, SpecError, UnknownModelError
    for err in (SpecError("stages[0]", "bad", source="x.json"), FileFormatError("m.keras", "not a zip", "a .keras"),
                UnknownModelError("ran_e_gtt", ["ran_e_gt"])):
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)
