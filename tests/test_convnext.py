"""ConvNeXt and RAN-i: Table 7 figures, block structure, layer scale, stochastic depth, export."""

import json
import math

import numpy as np
import pytest

import ran_keras
from ran_keras import registry
from ran_keras.builder import load_model
from ran_keras.errors import SpecError
from ran_keras.models.convnext import CONVNEXT_CONFIGS, RAN_I_CONFIGS, convnext_spec
from ran_keras.spec import drop_path_rates, model_drop_path, with_drop_path
from ran_keras.analysis.profiler import profile_model, profile_spec
from ran_keras.spec import BlockSpec, NetworkSpec, scale_depth, stage_depths

CONVNEXT_FAMILY = ["convnext_tiny", "convnext_small", "convnext_base", "ran_i_tiny", "ran_i_small", "ran_i_base"]

# the table: paper Table 7 (RAN-i) and Table 4 / Fig. 7 (ConvNeXt)
TABLE_7 = {
    "ran_i_tiny": ([64, 128, 256, 511], [5, 5, 15, 5], 20.76e6, 3.3e9, 0.1),
    "ran_i_small": ([76, 151, 303, 606], [5, 5, 15, 5], 28.93e6, 4.59e9, 0.2),
    "ran_i_base": ([87, 175, 350, 699], [7, 7, 21, 7], 52.89e6, 8.45e9, 0.4),
    "convnext_tiny": ([96, 192, 384, 768], [3, 3, 9, 3], 28.6e6, 4.47e9, 0.1),
    "convnext_small": ([96, 192, 384, 768], [3, 3, 27, 3], 50.2e6, 8.7e9, 0.4),
    "convnext_base": ([128, 256, 512, 1024], [3, 3, 27, 3], 88.6e6, 15.4e9, 0.5),
}


def stage_widths(spec):
    return [stage[-1].channels for stage in spec.stages]


def tiny_convnext(drop_path=0.0, **kwargs):
    return convnext_spec("cx", [8, 16], [1, 2], drop_path, **kwargs)


@pytest.mark.parametrize("name", CONVNEXT_FAMILY)
def test_table_7_rows_at_224(name):
    widths, depths, params, macs, drop_path = TABLE_7[name]
    spec = ran_keras.get_spec(name)
    assert stage_widths(spec) == widths and list(stage_depths(spec)) == depths
    prof = profile_spec(spec)
    assert abs(prof.params - params) <= 0.005 * params, prof.params
    assert abs(prof.macs - macs) <= 0.01 * macs, prof.macs
    assert model_drop_path(spec) == pytest.approx(drop_path)


@pytest.mark.parametrize("name", CONVNEXT_FAMILY)
def test_paper_macs_are_ours_plus_fvcore_layernorm_flops(name):
    """The paper's MACs (fvcore, as ConvNeXt counts) add 5 per LayerNorm element to conv/dense MACs."""
    prof = profile_spec(ran_keras.get_spec(name))
    ln_elements = sum(math.prod(r.output_shape) for r in prof.layers if r.op == "LayerNormalization")
    paper = registry.get_entry(name).paper.macs_value
    assert prof.macs < paper
    assert abs(prof.macs + 5 * ln_elements - paper) <= 0.0015 * paper


def test_ran_i_is_convnext_tiny_scaled_by_round():
    for name, cfg in RAN_I_CONFIGS.items():
        spec = ran_keras.get_spec(name)
        base_widths = CONVNEXT_CONFIGS["convnext_tiny"]["widths"]
        assert stage_widths(spec) == [int(math.floor(w * cfg["wm"] + 0.5)) for w in base_widths]
        assert list(stage_depths(spec)) == [int(math.floor(d * cfg["dm"] + 0.5)) for d in (3, 3, 9, 3)]
        assert spec.stem[0].channels == stage_widths(spec)[0]
        assert spec.family == "ran_i" and registry.get_entry(name).paper.top1_final is not None


def test_drop_path_follows_the_linear_rule_per_block():
    assert drop_path_rates(4, 0.3) == [0.0, 0.1, 0.2, 0.3]
    assert drop_path_rates(1, 0.3) == [0.0]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        drop_path_rates(3, 1.0)
    spec = ran_keras.get_spec("ran_i_base")
    rates = [b.drop_path for b in spec.blocks() if b.kind == "convnext"]
    assert len(rates) == 42 and rates[0] == 0.0 and rates[-1] == 0.4
    assert rates == pytest.approx([0.4 * i / 41 for i in range(42)], abs=1e-6)
    assert [b.drop_path for b in with_drop_path(spec, 0.0).blocks() if b.has("drop_path")] == [0.0] * 42
    data = json.loads(spec.to_json())
    assert data["stages"][3][-1]["drop_path"] == 0.4 and data["classifier_norm"] == "ln"


def test_scale_depth_keeps_the_downsampling_layer_once():
    spec = ran_keras.get_spec("convnext_tiny")
    deeper = scale_depth(spec, 2.56)
    assert stage_depths(deeper) == (8, 8, 23, 8)
    assert [b.kind for b in deeper.stages[1][:2]] == ["convnext_down", "convnext"]
    assert stage_depths(scale_depth(spec, 0.1)) == (1, 1, 1, 1)
    with pytest.raises(SpecError, match="positive"):
        scale_depth(spec, 0)


def test_layers_of_a_convnext_block_and_the_head():
    spec = tiny_convnext(0.5)
    model = ran_keras.create_model(spec, input_shape=(32, 32, 3), classes=5, seed=0)
    names = [layer.name for layer in model.layers]
    assert names[1:3] == ["cx_stem_block1_conv", "cx_stem_block1_ln"]
    block = [n[len("cx_stage2_block3_"):] for n in names if n.startswith("cx_stage2_block3_")]
    assert block == ["dw", "ln", "expand", "act", "project", "layer_scale", "drop_path", "add"]
    assert "cx_stage1_block1_drop_path" not in names  # the first block's rate is 0
    assert [n for n in names if n.startswith("cx_stage2_block1_")] == ["cx_stage2_block1_ln", "cx_stage2_block1_conv"]
    assert names[-3:] == ["cx_avg_pool", "cx_classifier_ln", "cx_predictions"]
    assert model.get_layer("cx_stage1_block1_expand").filters == 32  # 4x expansion
    assert model.get_layer("cx_stage1_block1_act").get_config()["activation"] == "gelu"
    gamma = model.get_layer("cx_stage2_block3_layer_scale").get_weights()[0]
    np.testing.assert_allclose(gamma, np.full(16, 1e-6, dtype=np.float32))
    analytic = profile_spec(spec, (32, 32, 3), classes=5).by_layer()
    assert dict(analytic) == dict(profile_model(model).by_layer())


def test_keras_applications_style_top_and_no_layer_scale():
    spec = tiny_convnext(layer_scale=None)
    features = ran_keras.create_model(spec, input_shape=(None, None, 3), include_top=False, pooling="avg")
    assert features.output_shape == (None, 16)
    assert not any("layer_scale" in layer.name or "classifier_ln" in layer.name for layer in features.layers)
    y = features(np.zeros((1, 64, 96, 3), np.float32))
    assert y.shape == (1, 16)


def test_stochastic_depth_drops_whole_samples_in_training_only():
    from ran_keras.backend import tf
    model = ran_keras.create_model(tiny_convnext(0.5), input_shape=(32, 32, 3), classes=5, seed=0)
    layer = model.get_layer("cx_stage2_block3_drop_path")
    assert layer.rate == 0.5
    x = tf.ones((64, 2, 2, 3))
    y = layer(x, training=True).numpy().reshape(64, -1)
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert np.all(y.min(axis=1) == y.max(axis=1)) and 0 < (y[:, 0] == 0).sum() < 64
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(images, training=False).numpy(), model(images, training=False).numpy())
    inference = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec((1, 32, 32, 3), tf.float32))
    assert not [op.type for op in inference.graph.get_operations() if "Random" in op.type]


def test_convnext_spec_validation_messages():
    with pytest.raises(SpecError) as err:
        NetworkSpec(name="bad", stem=(BlockSpec("conv", channels=8, kernel=4, stride=4),),
                    stages=((BlockSpec("convnext", channels=16),),))
    assert err.value.path == "stages[0][0]" and "8 -> 16" in str(err.value) and "convnext_down" in str(err.value)
    with pytest.raises(SpecError, match=r"drop_path: must be in \[0, 1\), got 1.0"):
        BlockSpec("convnext", channels=8, drop_path=1.0)
    with pytest.raises(SpecError, match="layer_scale: must be positive"):
        BlockSpec("convnext", channels=8, layer_scale=0)
    with pytest.raises(SpecError, match="classifier_norm: must be 'ln' or null, got 'bn'"):
        NetworkSpec.from_dict(dict(tiny_convnext().to_dict(), classifier_norm="bn"))
    block = BlockSpec("convnext", channels=8)
    assert (block.kernel, block.expansion, block.layer_scale, block.drop_path) == (7, 4, 1e-6, 0.0)


def test_layer_scale_config_and_saved_model(tmp_path):
    from ran_keras.layers import LayerScale
    layer = LayerScale(0.5, name="ls")
    assert LayerScale.from_config(layer.get_config()).init == 0.5
    model = ran_keras.create_model(tiny_convnext(0.2), input_shape=(32, 32, 3), classes=5, seed=1)
    model.get_layer("cx_stage1_block1_layer_scale").set_weights([np.arange(8, dtype=np.float32)])
    path = tmp_path / "cx.keras"
    model.save(path)
    loaded = load_model(path)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert json.loads(loaded.to_json()) == json.loads(model.to_json())


def test_int8_export_runs_layernorm_on_the_npu_and_keras_means_would_not(tmp_path):
    """Exported as Keras converts it, each spatial LayerNorm leaves two channel-wise MEANs on the
    CPU on Ethos-U; the export's rewrite (the default) leaves none."""
    from ran_keras.export import tflite, vela
    model = ran_keras.create_model(convnext_spec("cx_vela", [16, 32], [1, 1]), input_shape=(32, 32, 3),
                                   classes=10, seed=0)
    spatial_ln = ["stem_block1_ln", "stage1_block1_ln", "stage2_block1_ln", "stage2_block2_ln"]
    for npu_layer_norm in (False, True):
        path = tmp_path / f"cx_vela_{npu_layer_norm}.tflite"
        path.write_bytes(tflite.to_tflite(model, npu_layer_norm=npu_layer_norm))
        report = vela.run_vela(path, "u55-128", tmp_path / f"vela_{npu_layer_norm}")
        if npu_layer_norm:
            assert report.cpu_ops == []
            continue
        assert {op["op"] for op in report.cpu_ops} == {"MEAN"}
        assert len(report.cpu_ops) == 2 * len(spatial_ln)
        assert all(any(ln in op["name"] for ln in spatial_ln) for op in report.cpu_ops)
        assert all("depth-reduction" in op["reason"] for op in report.cpu_ops)
