"""int8 / fp32 TFLite export: conversion, flatbuffer checks, int8-vs-Keras agreement, calibration sources."""

import json

import numpy as np
import pytest

from ran_keras.data import photos
from ran_keras.cli import main
from ran_keras.export import calibration as cal
from ran_keras.export.errors import CalibrationError, ExportError, FloatTensorError, TFLiteFileError
from ran_keras.export.flatbuffer import check_integer_only, inspect_tflite
from ran_keras.export.pipeline import default_output, export_model, model_label, resolve_model_arg
from ran_keras.export.tflite import compare_with_keras, to_tflite


def tiny_model(keras, size=16, classes=10, seed=0):
    """conv-BN-ReLU6 -> depthwise -> GAP -> softmax dense: every op kind the zoo exports."""
    L = keras.layers
    init = keras.initializers.GlorotUniform(seed=seed)
    x = inp = keras.Input((size, size, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", kernel_initializer=init, name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="act")(x)
    x = L.DepthwiseConv2D(3, padding="same", depthwise_initializer=init, name="dw")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dense(classes, activation="softmax", kernel_initializer=init, name="predictions")(x)
    return keras.Model(inp, x, name="tiny")


@pytest.fixture(scope="module")
def tiny(keras):
    return tiny_model(keras)


@pytest.fixture(scope="module")
def calib():
    return photos.normalize(photos.offline_photos(4, 16), type("S", (), {"input_mean": (127.5,), "input_std": (127.5,)}))


@pytest.fixture(scope="module")
def tiny_int8(tiny, calib):
    return to_tflite(tiny, calib)


def test_int8_export_is_integer_only_with_int8_io(tiny_int8):
    info = inspect_tflite(tiny_int8)
    assert info.is_integer_only
    assert [t.dtype for t in info.inputs] == ["INT8"] and [t.dtype for t in info.outputs] == ["INT8"]
    assert info.inputs[0].shape == (1, 16, 16, 3)
    assert list(info.op_counts) == ["CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    check_integer_only(info)  # no raise


def test_same_inputs_same_bytes(tiny, calib, tiny_int8):
    assert to_tflite(tiny, calib) == tiny_int8
    assert to_tflite(tiny, calib[:2]) != tiny_int8  # calibration data matters


def test_per_tensor_weights_have_one_scale(tiny, calib, tiny_int8):
    from ethosu.vela.tflite import Model
    def conv_weight_scales(data):
        m = Model.Model.GetRootAs(data, 0)
        g = m.Subgraphs(0)
        t = next(g.Tensors(i) for i in range(g.TensorsLength())
                 if g.Tensors(i).ShapeLength() == 4 and g.Tensors(i).Shape(0) == 8 and g.Tensors(i).Shape(3) == 3)
        return t.Quantization().ScaleLength()
    assert conv_weight_scales(tiny_int8) == 8
    assert conv_weight_scales(to_tflite(tiny, calib, per_channel=False)) == 1


def test_fp32_export_is_float_and_fails_the_integer_check(tiny):
    data_ = to_tflite(tiny, int8=False)
    info = inspect_tflite(data_)
    assert info.inputs[0].dtype == "FLOAT32" and info.float_tensors
    with pytest.raises(FloatTensorError, match=r"float tensor.*int8/int32"):
        check_integer_only(info)


def test_default_calibration_is_seeded_random(tiny):
    assert to_tflite(tiny) == to_tflite(tiny)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8, 3), np.float32), r"float32 \(N, 16, 16, 3\)"),
    (np.full((2, 16, 16, 3), np.nan, np.float32), "NaN"),
])
def test_bad_calibration_data_is_rejected(tiny, bad, message):
    with pytest.raises(ExportError, match=message):
        to_tflite(tiny, bad)


def test_export_needs_a_fixed_input_size(keras):
    x = inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(x))
    with pytest.raises(ExportError, match="fixed"):
        to_tflite(model)


def test_compare_reads_logits_before_softmax(tiny, calib, tiny_int8):
    agree = compare_with_keras(tiny, tiny_int8, calib)
    assert agree["compared"] == "logits" and agree["images"] == 4
    assert agree["top1_agreement"] >= 0.75  # 4/4 measured; int8 may flip at most one near-tie
    # int8 logits are within a few quantisation steps of the float logits
    assert agree["max_abs_error"] < 0.1 * agree["reference_abs_max"] + 1e-6
    fp32 = compare_with_keras(tiny, to_tflite(tiny, int8=False), calib)
    assert fp32["top1_agreement"] == 1.0 and fp32["max_abs_error"] < 1e-4


def test_inspect_rejects_non_tflite(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(TFLiteFileError, match="TFL3"):
        inspect_tflite(bad)
    with pytest.raises(FileNotFoundError):
        inspect_tflite(tmp_path / "missing.tflite")


# --- calibration sources -----------------------------------------------------------------------------

def test_photo_and_random_sources_are_deterministic():
    a, info = cal.load_images("photos", 3, 24, seed=1)
    b, _ = cal.load_images("photos", 3, 24, seed=1)
    assert a.dtype == np.uint8 and a.shape == (3, 24, 24, 3) and np.array_equal(a, b)
    assert info["source"] == "photos" and info["count"] == 3
    r1, rinfo = cal.load_images("random", 2, 8, seed=3)
    assert np.array_equal(r1, cal.load_images("random", 2, 8, seed=3)[0]) and rinfo["source"] == "random"


def test_calibration_set_normalises_like_the_spec():
    import ran_keras
    spec = ran_keras.get_spec("resnet18")
    x, info = cal.calibration_set("photos", 2, 32, spec=spec)
    raw, _ = cal.load_images("photos", 2, 32)
    assert np.allclose(x, photos.normalize(raw, spec)) and x.dtype == np.float32
    assert info["input_mean"] == list(spec.input_mean)


def test_folder_source(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (20, 50), (33, 33)]):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(cal.CalibrationWarning, match="gave 3 image"):
        images, info = cal.load_images(f"folder:{tmp_path}", 5, 16)
    assert images.shape == (3, 16, 16, 3) and info["count"] == 3 and info["files"] == ["img0.png", "img1.png",
                                                                                         "img2.png"]
    assert cal.parse_source(str(tmp_path)).kind == "folder"  # a bare directory works too


def test_tfds_source_with_mock_data():
    import ran_keras.backend  # noqa: F401
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        images, info = cal.load_images("tfds:imagenet2012:validation", 3, 16)
    assert images.shape == (3, 16, 16, 3) and info["source"] == "tfds:imagenet2012:validation"
    assert info["feature"] == "image"


@pytest.mark.parametrize("source, message", [
    ("webcam", "unknown calibration source 'webcam'"),
    ("folder:/nonexistent/dir", "does not exist"),
    ("tfds:no_such_dataset_xyz", "no dataset named"),
    ("tfds:mnist:train", "not prepared"),
])
def test_calibration_source_errors(source, message, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(CalibrationError, match=message):
        cal.load_images(source, 2, 8, data_dir=str(tmp_path))


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(CalibrationError, match="no image files"):
        cal.load_images(f"folder:{tmp_path}", 2, 8)


# --- the export pipeline and `ran export` ------------------------------------------------------------

def test_export_registered_model_writes_checked_file(tmp_path):
    out = tmp_path / "gt.tflite"
    res = export_model("ran_e_gt", out, input_size=32, samples=2, calibration="random")
    rep = res.report
    assert out.read_bytes() == res.tflite and rep["output"] == str(out)
    assert rep["integer_only"] and rep["quantization"] == "int8" and rep["weights"] == "per-channel"
    assert rep["calibration"]["source"] == "random" and rep["calibration"]["count"] == 2
    assert rep["tflite"]["ops"]["HARD_SWISH"] > 0 and rep["agreement"]["compared"] == "logits"
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_failed_int8_check_leaves_no_file(tmp_path, monkeypatch):
    from ran_keras.export import tflite
    real = tflite.to_tflite
    monkeypatch.setattr(tflite, "to_tflite", lambda model, cal_, **kw: real(model, int8=False))
    out = tmp_path / "bad.tflite"
    with pytest.raises(FloatTensorError, match="int8 export of ran_e_gt"):
        export_model("ran_e_gt", out, input_size=32, samples=1, calibration="random", compare=False)
    assert list(tmp_path.iterdir()) == []


def test_export_saved_keras_model(tmp_path, tiny):
    path = tmp_path / "tiny.keras"
    tiny.save(path)
    res = export_model(str(path), None, samples=2, calibration="random", compare=True)
    assert res.report["origin"] == "keras" and res.report["calibration"]["input_mean"] == [127.5]
    assert "normalisation_note" in res.report["calibration"]
    with pytest.raises(ExportError, match="cannot change a saved model"):
        export_model(str(path), None, input_size=32)


def test_cli_export_json(tmp_path, capsys):
    out = tmp_path / "c.tflite"
    assert main(["export", "ran_e_c", "--input-size", "32", "--samples", "2", "-o", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["model"] == "ran_e_c" and rep["tflite"]["sha256"] == inspect_tflite(out).sha256
    assert rep["calibration"]["source"] == "photos"


def test_output_names_use_the_canonical_activation(tmp_path, tiny):
    from pathlib import Path
    import ran_keras
    assert model_label("ran_e_b", None) == model_label("ran_e_b", "default") == "ran_e_b"
    assert model_label("ran_e_b", "hswish") == model_label("ran_e_b", "Hard-Swish") == "ran_e_b_hard_swish"
    assert default_output("ran_e_b", "default", int8=False) == Path("ran_e_b_fp32.tflite")
    assert default_output("ran_e_b", "hswish") == Path("ran_e_b_hard_swish_int8.tflite")
    spec_path = ran_keras.get_spec("ran_e_gt").save(tmp_path / "my_file.json")
    assert default_output(str(spec_path), folder=tmp_path) == tmp_path / "ran_e_gt_int8.tflite"
    tiny.save(tmp_path / "tiny.keras")
    assert default_output(str(tmp_path / "tiny.keras")) == Path("tiny_int8.tflite")


def test_model_arguments_resolve_by_suffix_in_any_case(tmp_path):
    import ran_keras
    ran_keras.get_spec("ran_e_gt").save(tmp_path / "GT.JSON")
    ref = resolve_model_arg(str(tmp_path / "GT.JSON"), "relu6")
    assert ref.origin == "spec" and ref.label == "ran_e_gt_relu6" and ref.spec.activation == "relu6"
    ref = resolve_model_arg("ran_e_gt", "default")
    assert ref.origin == "registered" and ref.activation is None and ref.spec == ran_keras.get_spec("ran_e_gt")
    (tmp_path / "m.TFLITE").write_bytes(b"TFL3")
    ref = resolve_model_arg(str(tmp_path / "m.TFLITE"), command="ran vela", tflite=True)
    assert ref.origin == "tflite" and ref.label == "m"
    with pytest.raises(ExportError, match="already a TFLite file; `ran export` takes a registered name"):
        resolve_model_arg(str(tmp_path / "m.TFLITE"))
    with pytest.raises(ExportError, match="--activation applies to specs, not to .tflite files"):
        resolve_model_arg(str(tmp_path / "m.TFLITE"), "relu6", tflite=True)


def test_cli_export_text_and_fp32(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "ran_e_b", "--input-size", "32", "--fp32", "--no-compare", "--activation", "relu6"]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "ran_e_b_relu6_fp32.tflite").is_file()
    assert "ran_e_b_relu6: fp32 (float32 weights), input 32x32x3" in text and "ops (" in text


@pytest.mark.parametrize("argv, message", [
    (["export", "ran_e_zz"], "unknown model 'ran_e_zz'"),
    (["export", "ran_e_gt", "-o", "x.bin"], "must end in .tflite"),
    (["export", "ran_e_gt", "--fp32", "--per-tensor"], "--per-tensor applies to int8"),
    (["export", "ran_e_gt", "--calibration", "webcam"], "unknown calibration source"),
    (["export", "missing.keras"], "model file 'missing.keras' does not exist"),
    (["export", "missing.H5"], "model file 'missing.H5' does not exist"),
    (["export", "missing.JSON"], "spec file 'missing.JSON' does not exist"),
    (["export", "gt.tflite"], "'gt.tflite' is already a TFLite file; `ran export` takes a registered name, a spec "
                              ".json or a .keras/.h5 model (use `ran vela` or `ran bench-cpu` on .tflite files)"),
    (["export", "GT.TFLITE"], "'GT.TFLITE' is already a TFLite file"),
    (["export", "model.onnx"], "'model.onnx' is neither a registered model nor a model file ran-keras reads"),
    (["export", "ran_e_gt", "--activation", "tanhh"], "unknown activation 'tanhh'"),
])
def test_cli_export_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cpp_chatter_is_dropped_and_other_stderr_lines_are_kept(capfd, monkeypatch):
    import os
    from ran_keras.backend import filtered_stderr
    monkeypatch.delenv("RAN_KERAS_TF_LOGS", raising=False)
    with filtered_stderr(("fully_quantize: ",)):
        os.write(2, b"fully_quantize: 0, inference_type: 6\nreal converter error\n")
    err = capfd.readouterr().err
    assert "fully_quantize" not in err
    assert "real converter error" in err
    monkeypatch.setenv("RAN_KERAS_TF_LOGS", "1")
    with filtered_stderr(("fully_quantize: ",)):
        os.write(2, b"fully_quantize: 0\n")
    assert "fully_quantize: 0" in capfd.readouterr().err
