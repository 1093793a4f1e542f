"""``ran eval`` and the reference preprocessing recipes; ``ran export`` / ``ran hwtable`` on an imported
model (the spec sidecar carries its normalisation); int8 evaluation of the exported .tflite."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ran_keras
from ran_keras import evaluation
from ran_keras.cli import main
from ran_keras.data import eval_preprocessing as prep
from ran_keras.data.photos import offline_photos
from ran_keras.spec import load_sidecar, scale_width

TORCH_REF = Path(__file__).parent / "data" / "torch_reference"


def _encode(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, fmt)
    return buf.getvalue()


def test_tf_recipe_crops_like_the_ran_e_reference():
    """At min side 256 and size 224 the crop is 224 (224/256 of it): the resize is the identity, so the output is
    exactly the window the reference cuts, offsets (h - crop + 1) // 2."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 301, 3))
    out = prep.preprocess(_encode(image), 224, prep.get_recipe("tf-crop-bilinear"))
    np.testing.assert_array_equal(out, image[16:240, 39:263].astype(np.float32))
    jpeg = _encode(image, "JPEG")  # JPEGs are decoded only inside the window (decode_and_crop_jpeg)
    assert prep.preprocess(jpeg, 112, prep.RECIPES["tf-crop-bilinear"]).shape == (112, 112, 3)


def test_pil_recipes_follow_torchvision_resize_and_center_crop():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (400, 300, 3)).astype(np.uint8)   # h 400, w 300
    for name, resample in (("pil-resize-crop-bicubic", Image.BICUBIC), ("pil-resize-crop-bilinear", Image.BILINEAR)):
        got = prep.preprocess(_encode(image), 224, prep.get_recipe(name))
        # torchvision: Resize(256) -> (w 256, h int(256 * 400 / 300) = 341); CenterCrop: top round(58.5) = 58
        expected = np.asarray(Image.fromarray(image).resize((256, 341), resample))[58:282, 16:240]
        np.testing.assert_array_equal(got, expected.astype(np.float32))
    with pytest.raises(prep.PreprocessingError, match="unknown preprocessing 'x'; accepted: tf-crop-bilinear"):
        prep.get_recipe("x")
    with pytest.raises(prep.PreprocessingError, match="cannot decode"):
        prep.preprocess(b"not an image", 32, prep.RECIPES["pil-resize-crop-bilinear"])
    assert prep.recipe_for(ran_keras.get_spec("ran_e_gt")).name == "tf-crop-bilinear"
    assert prep.recipe_for(ran_keras.get_spec("ran_i_tiny")).name == "pil-resize-crop-bicubic"
    assert prep.recipe_for(ran_keras.get_spec("resnet18")).name == "pil-resize-crop-bilinear"


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Offline photos in 3 class folders (JPEG and PNG)."""
    root = tmp_path_factory.mktemp("photos")
    for i, img in enumerate(offline_photos(9, 96, seed=0)):
        folder = root / f"class{i % 3}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.{'jpg' if i % 2 else 'png'}").write_bytes(_encode(img, "JPEG" if i % 2 else "PNG"))
    return root


def _expected_top1(model, spec, root, size, recipe):
    """Top-1 computed directly, image by image."""
    hits = total = 0
    for label, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for path in sorted(folder.iterdir()):
            x = (prep.preprocess(path.read_bytes(), size, recipe) - np.float32(spec.input_mean)) / np.float32(spec.input_std)
            hits += int(np.argmax(model(x[None]).numpy()) == label)
            total += 1
    return hits / total, total


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The torch-reference ResNet-18 (width 1/8) imported with `ran weights import` at 32x32."""
    out = tmp_path_factory.mktemp("imp") / "r18.keras"
    spec_file = scale_width(ran_keras.get_spec("resnet18"), 0.125, name="r18").save(out.with_name("r18.json"))
    assert main(["weights", "import", str(TORCH_REF / "resnet18_w0125.pth"), "--model", str(spec_file),
                 "-o", str(out), "--input-size", "32"]) == 0
    return out


def test_eval_keras_file_on_an_image_folder(imported, photo_folder, capsys):
    assert main(["eval", "--model", str(imported), "--image_folder", str(photo_folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    spec = load_sidecar(imported)
    assert report["preprocessing"] == "pil-resize-crop-bilinear" and report["images"] == 9
    assert report["input_mean"] == pytest.approx(list(spec.input_mean))
    from ran_keras.builder import load_model
    top1, n = _expected_top1(load_model(imported), spec, photo_folder, 32, prep.RECIPES["pil-resize-crop-bilinear"])
    assert report["top1"] == pytest.approx(top1) and report["top5"] is not None


def test_export_and_int8_eval_of_an_imported_model(imported, photo_folder, tmp_path, capsys):
    tfl = tmp_path / "r18_int8.tflite"
    assert main(["export", str(imported), "-o", str(tfl), "--samples", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["calibration"]["input_mean"] == pytest.approx(list(load_sidecar(imported).input_mean))
    assert rep["spec"] == "r18" and load_sidecar(tfl).name == "r18" and rep["integer_only"]
    assert main(["eval", "--model", str(tfl), "--image_folder", str(photo_folder), "--json"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert int8["kind"] == "tflite" and int8["images"] == 9 and 0 <= int8["top1"] <= 1
    tfl.with_suffix(".spec.json").unlink()
    assert main(["eval", "--model", str(tfl), "--image_folder", str(photo_folder)]) == 2
    assert "no spec beside it" in capsys.readouterr().err
    assert main(["eval", "--model", str(tfl), "--image_folder", str(photo_folder), "--spec", str(imported.with_name(
        "r18.json")), "--limit", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4


def test_eval_on_mock_imagenet(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        data = evaluation.tfds_data("imagenet2012", str(tmp_path))
        report = evaluation.evaluate("ran_e_gt", data, input_size=32, batch_size=4)
    assert data.num_classes == 1000 and report["images"] == 6 and report["preprocessing"] == "tf-crop-bilinear"
    assert 0 <= report["top1"] <= report["top5"] <= 1


def test_eval_refusals(tmp_path, photo_folder):
    with pytest.raises(evaluation.EvalError, match="has no images in class sub-folders"):
        evaluation.folder_data(tmp_path)
    from ran_keras.builder import build_model
    spec = scale_width(ran_keras.get_spec("resnet18"), 0.125, name="two")
    build_model(spec, (32, 32, 3), classes=2).save(tmp_path / "two.keras")
    spec.save(tmp_path / "two.spec.json")
    with pytest.raises(evaluation.EvalError, match="has 3 classes but .*two.keras outputs 2"):
        evaluation.evaluate(tmp_path / "two.keras", evaluation.folder_data(photo_folder))
    with pytest.raises(evaluation.EvalError, match="--weights imports into a registered model or spec"):
        evaluation.evaluate(tmp_path / "two.keras", evaluation.folder_data(photo_folder), weights="x.pth")


@pytest.mark.slow
def test_hwtable_on_an_imported_model(imported, tmp_path, capsys):
    assert main(["hwtable", "--models", str(imported), "--targets", "u55-128", "--input-size", "32",
                 "--classes", "10", "--jobs", "1", "--output-dir", str(tmp_path / "hw"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    row = next(m for m in doc["models"] if m["label"] == "r18")
    assert row["targets"]["u55-128"]["inferences_per_second"] > 0 and row["paper"] is None
    assert main(["hwtable", "--models", str(imported), "--targets", "u55-128", "--input-size", "64",
                 "--jobs", "1", "--output-dir", str(tmp_path / "hw2")]) == 1  # the row fails, the table is written
    err = capsys.readouterr().err
    assert "r18: export failed:" in err and "this table is at --input-size 64" in err


def test_hwtable_needs_the_spec_beside_a_saved_model(tmp_path):
    from ran_keras.export import hwtable
    from ran_keras.export.errors import ExportError
    from ran_keras.export.settings import Settings
    saved = tmp_path / "mine.keras"
    saved.write_bytes(b"not read")
    with pytest.raises(ExportError, match="mine.keras: ran hwtable needs the model's spec beside it .mine.spec.json"):
        hwtable._plan(Settings(models=[str(saved)]))
    spec = scale_width(ran_keras.get_spec("resnet18"), 0.125, name="mine")
    spec.save(tmp_path / "mine.spec.json")
    plan, _ = hwtable._plan(Settings(models=[str(saved)]))
    assert [(label, s.name) for label, _, s in plan] == [("efficientnet_lite_b0", "efficientnet_lite_b0"), ("mine", "mine")]
