"""`ran bench-cpu`: TFLite interpreter latency/FPS and interleaved A/B ratios (no timing thresholds)."""

import json

import numpy as np
import pytest

from ran_keras.cli import main
from ran_keras.export import bench
from ran_keras.export.errors import ExportError
from ran_keras.export.tflite import to_tflite


@pytest.fixture(scope="module")
def models(keras, tmp_path_factory):
    """A small and a 4x wider int8 model, and the small one in fp32."""
    folder = tmp_path_factory.mktemp("bench")
    out = {}
    for name, width in (("small", 8), ("wide", 32)):
        inp = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inp)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inp, keras.layers.Dense(10)(x))
        calib = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
        out[name] = folder / f"{name}.tflite"
        out[name].write_bytes(to_tflite(model, calib))
        if name == "small":
            out["small_fp32"] = folder / "small_fp32.tflite"
            out["small_fp32"].write_bytes(to_tflite(model, int8=False))
    return out


def test_bench_tflite(models):
    res = bench.bench_tflite(models["small"], runs=7, warmup=2)
    assert len(res.latencies_ms) == 7 and all(t > 0 for t in res.latencies_ms)
    assert res.median_ms == pytest.approx(float(np.median(res.latencies_ms)))
    assert res.fps == pytest.approx(1000 / res.median_ms) and res.input_dtype == "int8"
    d = res.to_dict()
    assert d["runs"] == 7 and d["threads"] == 1 and d["model"] == "small.tflite" and "latencies_ms" not in d
    fp32 = bench.bench_tflite(models["small_fp32"].read_bytes(), runs=3, warmup=0, threads=2)
    assert fp32.input_dtype == "float32" and fp32.threads == 2 and fp32.model.startswith("<")


def test_ab_bench_interleaves_and_reports_the_ratio(models):
    res = bench.ab_bench(models["small"], models["wide"], runs=6, warmup=1)
    assert len(res.a.latencies_ms) == len(res.b.latencies_ms) == 6
    assert res.ratio == pytest.approx(res.a.fps / res.b.fps)
    assert res.to_dict()["fps_ratio_a_over_b"] == res.ratio and res.a.sha256 != res.b.sha256


def test_ab_bench_runs_abba_and_the_ratio_is_fps_a_over_b(monkeypatch):
    """With fake interpreters (A takes 2 ms, B 5 ms): the call order and the numbers, exactly."""
    calls = []

    class FakeRunner:
        def __init__(self, model, threads, seed):
            self.name, self.sha256, self.dtype = model, model, "int8"

        def once(self):
            calls.append(self.name)
            return {"A": 2.0, "B": 5.0}[self.name]

    monkeypatch.setattr(bench, "_Runner", FakeRunner)
    res = bench.ab_bench("A", "B", runs=4, warmup=1)
    assert "".join(calls) == "AB" + "ABBA" * 2  # one warm-up pair, then A B B A A B B A
    assert res.a.latencies_ms == [2.0] * 4 and res.b.latencies_ms == [5.0] * 4
    assert res.a.fps == 500.0 and res.b.fps == 200.0 and res.ratio == 2.5


@pytest.mark.parametrize("kwargs, message", [({"runs": 0}, "runs must be"), ({"threads": 0}, "threads must be"),
                                             ({"warmup": -1}, "warmup must be")])
def test_bad_arguments(models, kwargs, message):
    with pytest.raises(ExportError, match=message):
        bench.bench_tflite(models["small"], **kwargs)


def test_cli_bench_files(models, capsys):
    assert main(["bench-cpu", str(models["small"]), "--runs", "3", "--warmup", "1"]) == 0
    assert "FPS over 3 runs after 1 warm-up" in capsys.readouterr().out
    assert main(["bench-cpu", str(models["small"]), "--vs", str(models["wide"]), "--runs", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["a"]["runs"] == 4 and data["fps_ratio_a_over_b"] > 0 and data["machine"]["cpu_count"]


def test_cli_bench_exports_models_first(capsys):
    argv = ["bench-cpu", "ran_e_gt", "--vs", "ran_e_b", "--fp32", "--input-size", "32", "--runs", "2",
            "--warmup", "0", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["a"]["model"] == "ran_e_gt (fp32)" and data["b"]["model"] == "ran_e_b (fp32)"
    assert data["a"]["input_dtype"] == data["b"]["input_dtype"] == "float32"


@pytest.mark.parametrize("argv, message", [
    (["bench-cpu", "missing.tflite"], "TFLite file 'missing.tflite' does not exist"),
    (["bench-cpu", "missing.TFLite"], "TFLite file 'missing.TFLite' does not exist"),
    (["bench-cpu", "nope_model"], "unknown model 'nope_model'"),
    (["bench-cpu", "model.onnx"], "'model.onnx' is neither a registered model nor a model file ran-keras reads; "
                                  "`ran bench-cpu` takes a .tflite file, a registered name"),
    (["bench-cpu", "ran_e_gt", "--vs", "other.pb"], "'other.pb' is neither"),  # checked before any export
])
def test_cli_bench_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
