"""The export's LayerNorm rewrite: ChannelLayerNorm computes LayerNormalization exactly (float),
every spatial LayerNorm of a registered model is replaced with all other layers shared, and the
int8 export then runs on the Ethos-U NPU (no MEAN left for the CPU)."""

import numpy as np
import pytest

import ran_keras
from ran_keras.backend import keras, tf
from ran_keras.layers import ChannelLayerNorm
from ran_keras.models.convnext import convnext_spec
from ran_keras.rewrite.layernorm import npu_layer_norm, spatial_layer_norms

from conftest import ALL_MODELS

LN_MODELS = [name for name in ALL_MODELS if ran_keras.get_spec(name).family in ("convnext", "ran_i")]


def test_channel_layer_norm_equals_keras_layer_norm(rng):
    x = (rng.normal(size=(2, 5, 7, 24)) * 3 + 2).astype(np.float32)
    ref, ours = keras.layers.LayerNormalization(epsilon=1e-6), ChannelLayerNorm(epsilon=1e-6)
    ref.build(x.shape)
    ours.build(x.shape)
    gamma, beta = rng.normal(size=24).astype(np.float32), rng.normal(size=24).astype(np.float32)
    ref.set_weights([gamma, beta])
    ours.set_weights([gamma, beta])
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad, message", [({"epsilon": 0}, "epsilon must be > 0")])
def test_channel_layer_norm_refuses_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        ChannelLayerNorm(**bad)
    with pytest.raises(ValueError, match=r"takes \(N, H, W, C\) inputs"):
        ChannelLayerNorm().build((None, 8))


def test_the_registry_has_layernorm_models():
    assert {"convnext_tiny", "ran_i_tiny"} <= set(LN_MODELS)


@pytest.mark.parametrize("name", LN_MODELS[:1] + [n for n in LN_MODELS if n.startswith("ran_i")][:1])
def test_rewrite_of_a_registered_model_is_exact_and_shares_every_other_layer(name):
    model = ran_keras.create_model(name, (32, 32, 3), classes=10, seed=0)
    for layer in model.layers:  # trained-looking affine parameters, not the 1/0 initial ones
        if isinstance(layer, keras.layers.LayerNormalization):
            layer.set_weights([w + np.random.default_rng(1).normal(0, 0.3, w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    new, replaced = npu_layer_norm(model)
    norms = [layer.name for layer in model.layers if isinstance(layer, keras.layers.LayerNormalization)]
    assert sorted(replaced) == sorted(set(norms) - {f"{name}_classifier_ln"})  # the head's is on (N, C): on the NPU
    assert len(replaced) == 22 if name == "convnext_tiny" else len(replaced) > 0
    assert all(isinstance(new.get_layer(n), ChannelLayerNorm) for n in replaced)
    kept = [layer for layer in model.layers[1:] if layer.name not in replaced]   # [0]: the input, always new
    assert kept and all(new.get_layer(layer.name) is layer for layer in kept)
    x = tf.random.stateless_normal((2, 32, 32, 3), seed=(1, 2))
    np.testing.assert_allclose(new(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5, rtol=0)


def test_models_without_spatial_layernorm_come_back_unchanged():
    model = ran_keras.create_model("ran_e_gt", (32, 32, 3), classes=5, seed=0)
    assert spatial_layer_norms(model) == [] and npu_layer_norm(model) == (model, [])


@pytest.mark.parametrize("target", ["u55-128", "u65-256", "u85-256"])
def test_int8_convnext_runs_wholly_on_the_npu(target, tmp_path):
    from ran_keras.export.pipeline import export_model
    from ran_keras.export.vela import run_vela
    spec = convnext_spec("cx_npu", [16, 32], [1, 1])
    path = tmp_path / "cx.tflite"
    result = export_model(spec, path, input_size=32, classes=10, calibration="photos", samples=4)
    assert result.info.op_counts["MEAN"] == 3   # the global pool, the head's LayerNorm on (1, C): both NPU ops
    assert result.report["agreement"]["top1_agreement"] >= 0.75
    assert run_vela(path, target, tmp_path / "vela").cpu_ops == []
