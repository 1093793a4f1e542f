"""Every registered model builds, runs, round-trips its spec and its saved file."""

import json

import numpy as np
import pytest

import ran_keras
from ran_keras.builder import load_model
from ran_keras.errors import InputShapeError, UnknownModelError

from conftest import ALL_MODELS


def _batch(size=64, n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_builds_runs_and_round_trips(name, tmp_path):
    model = ran_keras.create_model(name, input_shape=(64, 64, 3), classes=10, seed=3)
    x = _batch()
    y = model(x, training=False).numpy()
    assert y.shape == (2, 10) and np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)

    # spec JSON -> identical architecture (same layer graph and configs, same seeded weights)
    spec = ran_keras.NetworkSpec.from_json(ran_keras.get_spec(name).to_json())
    again = ran_keras.create_model(spec, input_shape=(64, 64, 3), classes=10, seed=3)
    assert json.loads(again.to_json()) == json.loads(model.to_json())
    np.testing.assert_array_equal(again(x, training=False).numpy(), y)

    # saved file -> identical outputs
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), y)


def test_layers_are_named_after_model_stage_block_and_op():
    model = ran_keras.create_model("ran_e_c", input_shape=(64, 64, 3), classes=10)
    names = {layer.name for layer in model.layers}
    assert {"ran_e_c_stem_block1_conv", "ran_e_c_stage1_block1_pre_bn", "ran_e_c_stage3_block1_dw",
            "ran_e_c_stage7_block2_sub2_project", "ran_e_c_head_block2_dw", "ran_e_c_predictions"} <= names
    assert all(isinstance(n, str) and n.startswith("ran_e_c_") for n in names)


def test_keras_applications_style_arguments():
    model = ran_keras.create_model("ran_e_gt", input_shape=(None, None, 3), include_top=False, pooling="avg")
    assert model.output_shape == (None, 1344)
    y = model(_batch(96), training=False)
    assert y.shape == (2, 1344)
    logits = ran_keras.create_model("ran_e_gt", input_shape=(32, 32, 3), classes=5, classifier_activation=None)
    assert logits.layers[-1].activation.__name__ == "linear"
    relu6 = ran_keras.create_model("ran_e_gt", input_shape=(32, 32, 3), activation="relu6")
    assert not any(type(l).__name__ == "HardSwish" for l in relu6.layers)


def test_seeded_models_are_reproducible_and_seeds_differ():
    a = ran_keras.create_model("efficientnet_lite_b0", input_shape=(32, 32, 3), seed=1).get_weights()
    b = ran_keras.create_model("efficientnet_lite_b0", input_shape=(32, 32, 3), seed=1).get_weights()
    c = ran_keras.create_model("efficientnet_lite_b0", input_shape=(32, 32, 3), seed=2).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_weights_argument_loads_saved_weights(tmp_path):
    model = ran_keras.create_model("ran_e_gt", input_shape=(32, 32, 3), seed=5)
    path = tmp_path / "gt.weights.h5"
    model.save_weights(path)
    again = ran_keras.create_model("ran_e_gt", input_shape=(32, 32, 3), weights=str(path))
    x = _batch(32)
    np.testing.assert_array_equal(again(x).numpy(), model(x).numpy())
    with pytest.raises(FileNotFoundError, match="ships no pretrained weights"):
        ran_keras.create_model("ran_e_gt", weights=str(tmp_path / "none.h5"))


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownModelError) as err:
        ran_keras.create_model("ran_e_gtt")
    assert "ran_e_gt" in str(err.value) and "ran list" in str(err.value)


def test_input_too_small_for_total_stride():
    with pytest.raises(InputShapeError, match="total stride is 32"):
        ran_keras.create_model("ran_e_c", input_shape=(31, 64, 3))
    with pytest.raises(ValueError, match="classes must be a positive integer"):
        ran_keras.create_model("ran_e_c", input_shape=(32, 32, 3), classes=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ran_e_gt", "efficientnet_lite_b0", "ran_e_supernet"])
def test_full_size_forward_pass(name):
    model = ran_keras.create_model(name, seed=0)
    y = model(_batch(224, n=1), training=False).numpy()
    assert y.shape == (1, 1000) and np.all(np.isfinite(y))
