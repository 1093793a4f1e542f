"""Vela: named targets and configs, compiling and parsing, CPU fallbacks, every error path, PReLU lowering."""

import configparser
import json

import numpy as np
import pytest

from ran_keras.cli import main
from ran_keras.export import vela
from ran_keras.export.errors import (CpuOpsError, FloatTensorError, TFLiteFileError, UnknownTargetError,
                                     VelaConfigError, VelaError, VelaNotInstalledError)
from ran_keras.export.tflite import to_tflite

PEAKS = {"u55-128": 128, "u65-256": 256, "u65-256-384k": 256, "u85-256": 256, "u85-512": 512}  # MACs/cycle of each accelerator
NAMED = {"u55-128": ("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram"),
         "u65-256": ("ethos-u65-256", "Ethos_U65_High_End", "Dedicated_Sram"),
         "u65-256-384k": ("ethos-u65-256", "Ethos_U65_High_End", "Dedicated_Sram_384KB"),
         "u85-256": ("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram"),
         "u85-512": ("ethos-u85-512", "Ethos_U85_SYS_DRAM_High", "Dedicated_Sram")}


def int8_file(keras, path, body, shape=(16, 16, 8), seed=0):
    """Write the int8 TFLite of ``body(inputs) -> outputs`` (calibrated on seeded normal data)."""
    inp = keras.Input(shape)
    model = keras.Model(inp, body(inp))
    rng = np.random.default_rng(seed)
    path.write_bytes(to_tflite(model, rng.standard_normal((4,) + shape).astype(np.float32)))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, keras):
    L = keras.layers
    init = keras.initializers.GlorotUniform(seed=1)

    def body(x):
        x = L.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init)(x)
        x = L.DepthwiseConv2D(3, strides=2, padding="same", depthwise_initializer=init)(x)
        x = L.GlobalAveragePooling2D()(x)
        return L.Dense(10, activation="softmax", kernel_initializer=init)(x)
    return int8_file(keras, tmp_path_factory.mktemp("vela") / "small.tflite", body)


@pytest.fixture(scope="module")
def with_cpu_op(tmp_path_factory, keras):
    from ran_keras.backend import tf
    L = keras.layers

    def body(x):
        x = L.Conv2D(16, 3, padding="same")(x)
        x = L.Lambda(lambda t: tf.nn.depth_to_space(t, 2), name="d2s")(x)
        return L.Conv2D(8, 1)(x)
    return int8_file(keras, tmp_path_factory.mktemp("cpu") / "d2s.tflite", body)


# --- targets and configs -----------------------------------------------------------------------------

def test_named_targets_are_the_issue_settings():
    targets = vela.named_targets()
    assert list(targets) == list(NAMED)
    for name, (acc, system, memory) in NAMED.items():
        t = targets[name]
        assert (t.accelerator, t.system_config, t.memory_mode) == (acc, system, memory)
        vela.check_target(t)
    assert targets["u55-128"].paper_column == "fps_u55" and targets["u65-256"].paper_column == "fps_u65"


def test_our_ini_copies_the_bundled_vela_ini_values():
    ours, bundled = configparser.ConfigParser(), configparser.ConfigParser()
    ours.read(vela.our_config())
    bundled.read(vela.bundled_config())
    assert ours.sections()
    for section in ours.sections():
        assert dict(ours.items(section)) == dict(bundled.items(section)), section


def test_peak_macs_per_cycle_match_vela():
    from ethosu.vela.architecture_features import Accelerator, ArchitectureFeatures
    for name, peak in vela.PEAK_MACS_PER_CYCLE.items():
        acc = Accelerator(name)
        if name.startswith("ethos-u85"):
            assert peak == int(name.rsplit("-", 1)[1])
        else:
            cfg = ArchitectureFeatures.accelerator_configs[acc]
            assert peak == cfg.macs * cfg.cores, name
    assert set(vela.PEAK_MACS_PER_CYCLE) == set(Accelerator.member_list())


def test_user_combinations():
    t = vela.resolve_target("ethos-u55-256:Ethos_U55_Deep_Embedded:Shared_Sram")
    assert t.peak_macs_per_cycle == 256 and t.config.endswith("vela.ini")      # from Vela's bundled file
    t = vela.resolve_target({"accelerator": "ethos-u65-512", "system_config": "Ethos_U65_High_End",
                             "memory_mode": "Shared_Sram"})
    assert t.config == str(vela.our_config()) and t.peak_macs_per_cycle == 512
    assert vela.resolve_target("u65-256", arena_cache_size=262144).arena_cache_size == 262144


def test_arena_cache_size_only_where_vela_applies_it():
    """Vela caps only a separate SRAM cache (Dedicated_Sram); on Shared_Sram it would ignore the cap."""
    with pytest.raises(VelaConfigError, match="u55-128 uses Shared_Sram, where Vela ignores the cap"):
        vela.resolve_target("u55-128", arena_cache_size=262144)
    assert vela.resolve_target("u85-256", arena_cache_size=1 << 20).arena_cache_size == 1 << 20


@pytest.mark.parametrize("target, error, message", [
    ("u55", UnknownTargetError, r"unknown target 'u55'.*accepted: u55-128, u65-256, u65-256-384k, u85-256, u85-512"),
    ("ethos-u99-8:Ethos_U65_High_End:Shared_Sram", UnknownTargetError, "unknown accelerator 'ethos-u99-8'"),
    ("ethos-u55-128:Nope:Shared_Sram", VelaConfigError, "system config 'Nope'.*accepted:"),
    ("ethos-u65-256:Ethos_U65_High_End:Nope", VelaConfigError, "memory mode 'Nope'"),
    ("ethos-u55-128:Ethos_U55_High_End_Embedded:Dedicated_Sram", VelaConfigError,
     r"does not fit system Ethos_U55_High_End_Embedded: .*OffChipFlash \(must be Sram or Dram\).*"
     r"fit it: Shared_Sram, Sram_Only"),
    ({"accelerator": "ethos-u55-128"}, UnknownTargetError, "missing memory_mode, system_config"),
])
def test_bad_targets(target, error, message):
    with pytest.raises(error, match=message):
        vela.resolve_target(target)


# --- compiling and reading the report ------------------------------------------------------------------

def test_utilisation_by_hand():
    assert vela.utilisation(1_600_000, 25_000, 128) == 0.5      # 1.6M MACs / (25k cycles x 128)
    assert vela.utilisation(2_560_000, 40_000, 256) == 0.25
    assert vela.utilisation(100, 0, 128) == 0.0                 # no cycles: nothing measured


def test_run_vela_on_every_named_target(small, tmp_path):
    import csv
    for name in NAMED:
        rep = vela.run_vela(small, name, tmp_path / name)
        assert rep.target == name and rep.accelerator == NAMED[name][0] and not rep.cpu_ops
        assert rep.cycles_total >= rep.cycles_npu > 0 and rep.nn_macs > 0 and rep.npu_ops > 0
        with open(tmp_path / name / rep.files["summary_csv"], newline="") as f:
            summary = next(csv.DictReader(f))  # Vela's own figures, read here independently of the parser
        assert (rep.cycles_total, rep.nn_macs) == (int(float(summary["cycles_total"])), int(float(summary["nn_macs"])))
        assert rep.peak_macs_per_cycle == PEAKS[name]
        assert rep.utilisation == pytest.approx(
            float(summary["nn_macs"]) / (float(summary["cycles_total"]) * PEAKS[name]))
        assert rep.inference_time * rep.core_clock == pytest.approx(rep.cycles_total, rel=1e-6)
        assert rep.inferences_per_second == pytest.approx(1 / rep.inference_time, rel=1e-6)
        assert rep.sram_cap == (384.0 if name.endswith("384k") else None)
        assert (rep.dram_used > 0) == name.startswith(("u65", "u85")) and rep.off_chip_used > 0
        assert {l.op for l in rep.layers} >= {"Conv2D", "DepthwiseConv2D", "FullyConnected"}
        for f in rep.files.values():
            assert (tmp_path / name / f).is_file()
        assert not list((tmp_path / name).glob(".vela-*"))


def test_vela_report_is_deterministic(small, tmp_path):
    a = vela.run_vela(small, "u65-256", tmp_path).to_dict(layers=True)
    b = vela.run_vela(small, "u65-256", tmp_path).to_dict(layers=True)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_cpu_fallbacks_are_listed_and_can_fail(with_cpu_op, tmp_path):
    rep = vela.run_vela(with_cpu_op, "u55-128", tmp_path)
    assert rep.cpu_ops == [{"op": "DEPTH_TO_SPACE", "name": rep.cpu_ops[0]["name"], "reason": "Unsupported opType"}]
    assert "d2s" in rep.cpu_ops[0]["name"] and rep.to_dict()["cpu_op_count"] == 1
    with pytest.raises(CpuOpsError, match="1 operator.*CPU.*0 cycles.*DEPTH_TO_SPACE"):
        vela.run_vela(with_cpu_op, "u55-128", tmp_path, fail_on_cpu_ops=True)


def test_cli_fail_on_cpu_ops(with_cpu_op, tmp_path, capsys):
    args = ["vela", str(with_cpu_op), "--target", "u55-128", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "WARNING: 1 operator(s) run on the CPU" in out.out and "DEPTH_TO_SPACE" in out.err
    assert main(args + ["--fail-on-cpu-ops"]) == 1


def test_float_model_is_rejected(keras, tmp_path):
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(inp))
    path = tmp_path / "float.tflite"
    path.write_bytes(to_tflite(model, int8=False))
    with pytest.raises(FloatTensorError, match=r"float model .*FLOAT32.*ran export"):
        vela.run_vela(path, "u55-128", tmp_path / "out")


def test_not_a_tflite_file(tmp_path):
    path = tmp_path / "junk.tflite"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(TFLiteFileError):
        vela.run_vela(path, "u55-128", tmp_path)
    with pytest.raises(FileNotFoundError):
        vela.run_vela(tmp_path / "none.tflite", "u55-128", tmp_path)


def test_vela_not_installed(small, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vela, "vela_available", lambda: False)
    with pytest.raises(VelaNotInstalledError, match=r"pip install ethos-u-vela==5\.2\.0"):
        vela.run_vela(small, "u55-128", tmp_path)
    assert main(["vela", str(small), "--output-dir", str(tmp_path)]) == 2
    assert "Vela is not installed" in capsys.readouterr().err


def test_vela_failure_shows_its_stderr(small, tmp_path):
    message = r"(?s)Vela failed \(exit 2\).*u55-128.*\nvela: error: .*cpu-tensor-alignment = 3"
    with pytest.raises(VelaError, match=message):
        vela.run_vela(small, "u55-128", tmp_path, extra_args=["--cpu-tensor-alignment", "3"])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_u55_with_dedicated_sram_fails_before_vela(small, tmp_path, capsys):
    with pytest.raises(VelaConfigError, match="does not fit"):
        vela.run_vela(small, "ethos-u55-128:Ethos_U55_High_End_Embedded:Dedicated_Sram", tmp_path)
    argv = ["vela", str(small), "--accelerator-config", "ethos-u55-128", "--system-config",
            "Ethos_U55_High_End_Embedded", "--memory-mode", "Dedicated_Sram", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "must be Sram or Dram" in capsys.readouterr().err


# --- per-channel PReLU on U55 -------------------------------------------------------------------------

def test_per_channel_prelu_lowers_to_mul_mul_maximum(keras, tmp_path):
    """Random (unequal) alphas: PReLU becomes Mul, Mul, Maximum on the NPU and costs far more than a
    fused ReLU; equal alphas collapse into one lookup table (so a test with equal alphas proves nothing)."""
    L = keras.layers

    def net(act):
        def body(x):
            x = L.Conv2D(32, 1, kernel_initializer=keras.initializers.GlorotUniform(seed=2))(x)
            x = act()(x)
            return L.Conv2D(32, 1, kernel_initializer=keras.initializers.GlorotUniform(seed=3))(x)
        return body

    random_alpha = lambda: L.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.05, 0.95, seed=4),  # noqa
                                   shared_axes=[1, 2])
    equal_alpha = lambda: L.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2])  # noqa
    reports = {}
    for name, act in (("relu", L.ReLU), ("prelu_random", random_alpha), ("prelu_equal", equal_alpha)):
        path = int8_file(keras, tmp_path / f"{name}.tflite", net(act), shape=(32, 32, 32))
        reports[name] = vela.run_vela(path, "u55-128", tmp_path / name)
    prelu = [l for l in reports["prelu_random"].layers if l.op == "Prelu"]
    assert prelu and sorted(set(n for l in prelu for n in l.npu_ops)) == ["Maximum", "Mul"]
    assert sorted(n for l in prelu for n in l.npu_ops) == ["Maximum", "Mul", "Mul"]
    assert not [l for l in reports["prelu_equal"].layers if "Maximum" in l.npu_ops]
    cycles = {k: r.cycles_total for k, r in reports.items()}
    assert cycles["prelu_random"] > 1.5 * cycles["relu"] and cycles["prelu_random"] > 1.2 * cycles["prelu_equal"]


# --- `ran vela` -----------------------------------------------------------------------------------------

def test_cli_list_targets(capsys):
    assert main(["vela", "--list-targets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMED) and "Ethos_U55_High_End_Embedded" in out
    assert main(["vela", "--list-targets", "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)["targets"]] == list(NAMED)


def test_cli_vela_json_and_text(small, tmp_path, capsys):
    assert main(["vela", str(small), "-t", "u55-128,u85-256", "--output-dir", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["target"] for r in data["reports"]] == ["u55-128", "u85-256"]
    assert all(r["cpu_op_count"] == 0 and r["top_layers"] for r in data["reports"])
    assert main(["vela", str(small), "-t", "u65-256-384k", "--output-dir", str(tmp_path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "SRAM cap 384 KiB" in out and "top 3 layers by cycles" in out and "NPU utilisation" in out


def test_cli_vela_takes_tflite_suffixes_in_any_case(small, tmp_path, capsys):
    upper = tmp_path / "SMALL.TFLITE"
    upper.write_bytes(small.read_bytes())
    assert main(["vela", str(upper), "-t", "u55-128", "--output-dir", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reports"][0]["network"] == "SMALL"
    assert main(["vela", str(upper), "-t", "u55-128", "--activation", "relu6"]) == 2
    assert "--activation applies to specs, not to .tflite files" in capsys.readouterr().err


def test_cli_vela_exports_a_model_first(tmp_path, capsys):
    assert main(["vela", "ran_e_gt", "--input-size", "32", "--samples", "1", "-t", "u55-128",
                 "--output-dir", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["export"]["model"] == "ran_e_gt" and data["reports"][0]["cpu_op_count"] == 0
    assert (tmp_path / "ran_e_gt_int8.tflite").is_file()


@pytest.mark.parametrize("argv, message", [
    (["vela"], "give a .tflite file"),
    (["vela", "x.tflite", "-t", "u99"], "unknown target 'u99'"),
    (["vela", "x.tflite", "--memory-mode", "Shared_Sram"], "needs all of --accelerator-config"),
    (["vela", "missing.tflite", "-t", "u55-128"], "TFLite file 'missing.tflite' does not exist"),
    (["vela", "model.TFLITE", "-t", "u55-128"], "TFLite file 'model.TFLITE' does not exist"),
    (["vela", "model.onnx", "-t", "u55-128"], "'model.onnx' is neither a registered model nor a model file "
                                             "ran-keras reads; `ran vela` takes a .tflite file"),
])
def test_cli_vela_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
