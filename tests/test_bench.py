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
    assert isinstance(bench.ab_ratio(models["small"], models["small"], runs=2, warmup=0), float)


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
    (["bench-cpu", "missing.tflite"], "does not exist"),
    (["bench-cpu", "nope_model"], "unknown model 'nope_model'"),
])
def test_cli_bench_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
