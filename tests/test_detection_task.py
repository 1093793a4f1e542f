"""The detection task in the training loop on mocked TFDS coco/2017, `ran detect` / `ran profile` on detectors."""

import json

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.cli import main
from ran_keras.train.config import ConfigError, resolve_config

from test_detection_model import small_config


def _coco_examples():
    """Hand-made coco/2017 records (tfds.testing.mock_data's random ones give `objects` sub-features
    different lengths, which TFDS refuses with undecoded images; see test_detection_datasets)."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(60, 80), (80, 60), (64, 64), (50, 90)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append({"image": tf.io.encode_png(pixels).numpy(), "image/filename": f"{i}.jpg".encode(),
                    "image/id": np.int64(100 + i),
                    "objects": {"id": np.array([1, 2], np.int64), "area": np.array([400, 30], np.int64),
                                "bbox": np.array([[0.1, 0.2, 0.6, 0.7], [0.5, 0.5, 0.9, 0.8]], np.float32),
                                "label": np.array([i % 3, 1], np.int64), "is_crowd": np.array([False, i == 3])}})
    return out


def _mock_coco():
    import tensorflow_datasets as tfds
    examples = _coco_examples()

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        columns = {k: [e[k] for e in examples] for k in ("image", "image/filename", "image/id")}
        objects = tf.data.Dataset.from_generator(lambda: (e["objects"] for e in examples), output_signature={
            "id": tf.TensorSpec([None], tf.int64), "area": tf.TensorSpec([None], tf.int64),
            "bbox": tf.TensorSpec([None, 4], tf.float32), "label": tf.TensorSpec([None], tf.int64),
            "is_crowd": tf.TensorSpec([None], tf.bool)})
        return tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(columns), objects)).map(
            lambda c, o: dict(c, objects=o))

    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset)


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """One training step and one evaluation pass of a small detector on mocked coco/2017."""
    from ran_keras.train import trainer
    tmp = tmp_path_factory.mktemp("coco")
    config_path = tmp / "detector.json"
    config_path.write_text(small_config(tmp, num_classes=81).to_json())
    cfg = resolve_config("faster_rcnn", dict(model=str(config_path), data_dir=str(tmp / "tfds"),
                                             model_dir=str(tmp / "run"), batch_size=2, steps_per_epoch=1, epochs=1,
                                             learning_rate=0.001, log_every=1, warmup_epochs=0))
    logs = []
    with _mock_coco():
        result = trainer.train(cfg, log=logs.append)
    return tmp / "run", result, logs


def test_one_step_on_mock_coco_then_coco_map(coco_run):
    run, result, logs = coco_run
    assert {"eval_AP", "eval_AP50", "eval_AP75", "eval_loss"} <= set(result.final)
    assert all(0.0 <= result.final[k] <= 1.0 for k in ("eval_AP", "eval_AP50", "eval_AP75"))
    assert np.isfinite(result.final["eval_loss"]) and result.final["eval_loss"] > 0
    record = json.loads((run / "results.json").read_text())
    assert record["final"]["eval_AP"] == result.final["eval_AP"]
    assert record["macs"] == sum(record["macs_by_part"].values()) and record["classes"] == 81
    assert any("rpn_objectness" in line and "roi_box" in line for line in logs)
    assert list((run / "tensorboard" / "eval").iterdir()) and (run / "detector" / "detector.json").is_file()
    assert "eval_AP" in (run / "metrics.csv").read_text().splitlines()[0]


def test_predict_cli_writes_json_and_png(coco_run, tmp_path):
    run, _, _ = coco_run
    pixels = np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(tf.io.encode_png(pixels).numpy())
    assert main(["detect", "predict", str(run / "detector"), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
                 "--min-score", "0"]) == 0
    record = json.loads((tmp_path / "out" / "detections.json").read_text())["images"][0]
    assert (record["height"], record["width"]) == (70, 50)
    assert all(0 <= d["box_xyxy"][2] <= 50 and 0 <= d["box_xyxy"][3] <= 70 for d in record["detections"])
    drawn = tf.io.decode_png((tmp_path / "out" / "a.png").read_bytes()).numpy()
    assert drawn.shape == (70, 50, 3)
    assert main(["detect", "predict", "rcnn_ran_i_small", str(tmp_path / "a.png"), "-o", str(tmp_path)]) == 2


def test_detection_config_errors_name_the_flag(tmp_path):
    from ran_keras.tasks.detection.task import DetectionTask
    with pytest.raises(ConfigError, match="--model: unknown detector"):
        DetectionTask(resolve_config("faster_rcnn", dict(model="rcnn_nope")))
    with pytest.raises(ConfigError, match="--lr_steps"):
        resolve_config("faster_rcnn", dict(lr_steps="22,16"))
    task = DetectionTask(resolve_config("faster_rcnn", dict(model="rcnn_ran_i_small", dataset="voc:" + str(tmp_path))))
    with pytest.raises(ConfigError, match="--dataset"):
        task.setup(None)


def test_step_schedule():
    from ran_keras.train.trainer import WarmupSchedule
    schedule = WarmupSchedule(1.0, 0, 100, "step", boundaries=(16, 22), decay=0.1)
    assert [round(float(schedule(s)), 6) for s in (0, 15, 16, 21, 22, 99)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cfg = resolve_config("faster_rcnn", {})
    assert (cfg.task, cfg.optimizer, cfg.lr_steps, cfg.epochs, cfg.weight_decay) == ("detection", "sgd", "16,22",
                                                                                     26, 1e-4)


def test_profile_and_list_detectors(capsys):
    assert main(["profile", "rcnn_ran_i_small", "rcnn_convnext_small", "--rois", "512"]) == 0
    text = capsys.readouterr().out
    assert "63.60M" in text and "94.87M" in text and "512 RoIs" in text and "800x800" in text
    assert main(["profile", "rcnn_ran_i_small", "--image-size", "800x1216", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["image_size"] == [800, 1216] and record["params"] == 63599074
    assert record["macs"] == sum(p["macs"] for p in record["parts"].values())
    assert main(["detect", "list", "--json"]) == 0
    names = [d["name"] for d in json.loads(capsys.readouterr().out)["detectors"]]
    assert names[:4] == ["rcnn_convnext_small", "rcnn_ran_i_small", "rcnn_convnext_base", "rcnn_ran_i_base"]
    assert main(["profile", "rcnn_ran_i_small", "--image-size", "8x8"]) == 2
    assert "HxW with both sides >= 32" in capsys.readouterr().err


def test_deepforest_crops(tmp_path):
    pytest.importorskip("importlib").util.find_spec("deepforest") or pytest.skip("deepforest data not installed")
    from ran_keras.tasks.detection import deepforest_data as D
    from ran_keras.tasks.detection.datasets import voc_source
    folder = D.write_crops(tmp_path, ["SOAP_061"], size=256, stride=144)
    source = voc_source(folder)
    assert source.class_names == ("Tree",) and source.num_examples == 4          # 400 px: starts 0 and 144
    for record in source.dataset():
        boxes = record["boxes"].numpy()
        assert record["image"].shape[:2] == (256, 256) and len(boxes) > 0
        assert (boxes >= 0).all() and (boxes <= 256).all()


@pytest.mark.slow
def test_export_backbone_rpn_int8_and_whole_detector_fp32(tmp_path):
    """A fresh 3-class detector (scores near 1/3, so there are detections to compare)."""
    config = tmp_path / "detector.json"
    config.write_text(small_config(tmp_path, num_classes=3).to_json())
    assert main(["detect", "export", str(config), "-o", str(tmp_path), "--json", str(tmp_path / "export.json")]) == 0
    report = json.loads((tmp_path / "export.json").read_text())
    npu = report["backbone_rpn_int8"]
    assert report["image_size"] == 64 and npu["input"] == [1, 64, 64, 3]
    assert [o["dtype"] for o in npu["outputs"]] == ["INT8"] * 3 and "CONV_2D" in npu["ops"]
    assert "RoIAlign" in npu["cpu_stage"]
    whole = report["whole_fp32"]
    assert whole["converted"] and whole["runs"] and whole["same_detection_count"], whole
    assert whole["keras_detections"] > 0 and whole["max_box_diff_px"] < 0.01 and whole["max_score_diff"] < 1e-5
