"""The detector model: config validation, Table 3 params, profile == built model, a training pass, weights."""

import json

import numpy as np
import pytest

from ran_keras.registry import get_spec
from ran_keras.spec import scale_width_depth
from ran_keras.tasks.detection.config import DetectorConfig, resize_shape
from ran_keras.tasks.detection.errors import DetectionError
from ran_keras.tasks.detection.profiling import profile_detector
from ran_keras.tasks.detection.zoo import DETECTORS, get_detector, list_detectors, resolve_detector

#: Table 3's params as the issue gives them (the paper prints 94.9M, 63.6M, 149.9M, 93.2M)
TABLE3 = {"rcnn_convnext_small": 94.87e6, "rcnn_ran_i_small": 63.60e6, "rcnn_convnext_base": 149.98e6,
          "rcnn_ran_i_base": 93.23e6}


def small_config(tmp_path, **changes):
    """A detector on a 1-1-3-1 block ConvNeXt-T at width 1/8 (spec JSON), small head and counts."""
    spec = scale_width_depth(get_spec("convnext_tiny"), 0.125, 0.34, name="tiny_backbone")
    path = tmp_path / "tiny_backbone.json"
    spec.save(path)
    values = dict(name="rcnn_small_test", backbone=str(path), num_classes=4, representation_size=32,
                  rpn_pre_nms_train=60, rpn_post_nms_train=40, rpn_pre_nms_test=40, rpn_post_nms_test=20,
                  rpn_batch_per_image=32, roi_batch_per_image=16, detections_per_image=10, min_size=64, max_size=96)
    values.update(changes)
    return DetectorConfig(**values)


@pytest.mark.parametrize("name", sorted(TABLE3))
def test_table3_params_reproduce_within_0_2_percent(name):
    prof = profile_detector(get_detector(name))
    assert abs(prof.params - TABLE3[name]) <= 0.002 * TABLE3[name]
    assert abs(prof.params - DETECTORS[name].paper.params_value) <= 0.05e6 + 0.002 * TABLE3[name]


def test_representation_size_is_what_makes_table3_come_out():
    config = get_detector("rcnn_ran_i_small")
    assert config.representation_size == 1024
    at_512 = profile_detector(config.replace(representation_size=512)).params
    assert abs(at_512 - TABLE3["rcnn_ran_i_small"]) > 0.2 * TABLE3["rcnn_ran_i_small"]


def test_macs_split_and_scaling():
    config = get_detector("rcnn_ran_i_small")
    a, b = profile_detector(config, (800, 800), 1000), profile_detector(config, (800, 800), 500)
    assert set(a.parts) == {"backbone", "rpn", "roi_head"} and a.macs == sum(p.macs for p in a.parts.values())
    assert a.parts["roi_head"].macs == 2 * b.parts["roi_head"].macs              # linear in RoIs
    assert a.parts["backbone"].macs == b.parts["backbone"].macs
    c = get_spec("ran_i_small").feature_info[-1].channels
    assert a.parts["rpn"].macs == 25 * 25 * (9 * c * c + c * 15 + c * 60)   # 800 / 32 = 25 cells, 15 anchors
    assert a.params == b.params and a.to_dict()["parts"]["roi_head"]["macs"] == a.parts["roi_head"].macs


def test_registered_detectors_are_separate_from_classification_models():
    from ran_keras.registry import list_models
    assert not set(list_detectors()) & set(list_models())
    assert {"rcnn_convnext_tiny", "rcnn_ran_i_tiny"} <= set(list_detectors())
    assert all(DETECTORS[n].config.representation_size == 1024 for n in list_detectors() if "demo" not in n)


def test_config_validation_and_json_round_trip(tmp_path):
    config = get_detector("rcnn_ran_i_small")
    path = tmp_path / "d.json"
    path.write_text(config.to_json())
    assert resolve_detector(path) == config == DetectorConfig.from_dict(json.loads(config.to_json()))
    for bad, match in [(dict(num_classes=1), "num_classes: must be an integer >= 2"),
                       (dict(representation_size=0), "representation_size: must be a positive integer"),
                       (dict(rpn_fg_iou=1.5), r"rpn_fg_iou: must be a number in \[0, 1\], got 1.5"),
                       (dict(rpn_bg_iou=0.8), "background IoU must not exceed"),
                       (dict(anchor_sizes=()), "anchor_sizes: must be a non-empty list"),
                       (dict(min_size=900, max_size=800), "max_size"),
                       (dict(backbone_width=0), "backbone_width")]:
        with pytest.raises(DetectionError, match=match):
            config.replace(**bad)
    with pytest.raises(DetectionError, match="unknown setting.*colour"):
        DetectorConfig.from_dict(dict(config.to_dict(), colour=1))
    with pytest.raises(DetectionError, match="unknown detector 'rcnn_ran_i_smal'.*did you mean 'rcnn_ran_i_small'"):
        resolve_detector("rcnn_ran_i_smal")


def test_resize_shape_pads_to_32():
    config = get_detector("rcnn_ran_i_small")
    assert resize_shape(config, 480, 640) == (800, 1088)      # 800 x 1066 padded
    assert resize_shape(config, 333, 1000) == (416, 1216)     # long side capped at 1200


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from ran_keras.tasks.detection.model import build_detector
    config = small_config(tmp_path_factory.mktemp("det"))
    return config, build_detector(config, seed=1)


def test_profile_equals_the_built_model(built):
    from ran_keras.analysis.profiler import profile_model
    from ran_keras.tasks.detection.config import backbone_spec
from ran_keras.tasks.detection.model import build_backbone_rpn
    config, det = built
    prof = profile_detector(config, (96, 64), 20)
    weights = det.backbone_rpn.weights + det.roi_head.weights
    assert prof.params == sum(int(np.prod(w.shape)) for w in weights)
    fixed = profile_model(build_backbone_rpn(config, backbone_spec(config), (96, 64, 3)))
    assert fixed.macs == prof.parts["backbone"].macs + prof.parts["rpn"].macs
    assert 20 * profile_model(det.roi_head).macs == prof.parts["roi_head"].macs


def test_training_pass_and_inference(built):
    from ran_keras.backend import tf
    config, det = built
    images = tf.random.stateless_normal([2, 96, 64, 3], [0, 1])
    inputs = {"image": images, "image_size": tf.constant([[96, 64], [80, 64]]),
              "original_size": tf.constant([[192, 128], [160, 128]])}
    gt = {"boxes": tf.constant([[[4., 6., 40., 50.], [30., 40., 60., 90.]], [[0., 0., 20., 30.], [0., 0., 0., 0.]]]),
          "classes": tf.constant([[1, 3], [2, 0]]), "trainable": tf.constant([[True, True], [True, False]])}
    with tf.GradientTape() as tape:
        out = det.run(inputs, gt, tf.constant([3, 4]), training=True, detections=False)
        total = tf.add_n(list(out["losses"].values()))
    grads = tape.gradient(total, det.trainable_variables)
    assert set(out["losses"]) == {"rpn_objectness", "rpn_box", "roi_classifier", "roi_box"}
    assert float(out["losses"]["rpn_objectness"]) == pytest.approx(np.log(2), abs=0.02)   # logits start near 0
    assert all(g is not None for g in grads) and np.isfinite(float(total))
    again = det.run(inputs, gt, tf.constant([3, 4]), training=True, detections=False)
    assert {k: float(v) for k, v in again["losses"].items()} == {k: float(v) for k, v in out["losses"].items()}
    det_out = det(inputs)
    assert det_out["boxes"].shape == (2, 10, 4)
    boxes = det_out["boxes"].numpy()[det_out["valid"].numpy()]
    assert (boxes[:, 2] <= 128 + 1e-3).all() and (boxes[:, 3] <= 192 + 1e-3).all()     # original pixels


def test_save_load_and_backbone_weights(built, tmp_path):
    from ran_keras.registry import create_model
    from ran_keras.tasks.detection.config import backbone_spec
    from ran_keras.tasks.detection.model import build_detector, load_detector
    from ran_keras.errors import RanError
    config, det = built
    det.save_dir(tmp_path / "saved", backbone_spec(config))
    loaded = load_detector(tmp_path / "saved")
    assert loaded.config == config and loaded.stride == 32
    for a, b in zip(det.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    classifier = create_model(backbone_spec(config), (64, 64, 3), classes=10, seed=7)
    classifier.save(tmp_path / "backbone.keras")
    fresh = build_detector(config, seed=2, backbone_weights=str(tmp_path / "backbone.keras"))
    source = {layer.name: layer for layer in classifier.layers}
    stem = next(layer for layer in fresh.backbone_rpn.layers if layer.weights)
    np.testing.assert_array_equal(stem.get_weights()[0], source[stem.name].get_weights()[0])
    from ran_keras.spec import scale_width
    other = create_model(scale_width(get_spec("resnet18"), 0.125, name="tiny_backbone"), (64, 64, 3), classes=10)
    other.save(tmp_path / "other.keras")
    with pytest.raises(RanError, match="backbone layer.*not in it"):
        build_detector(config, seed=2, backbone_weights=str(tmp_path / "other.keras"))
    with pytest.raises(DetectionError, match="no detector.json"):
        load_detector(tmp_path)
