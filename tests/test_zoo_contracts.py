"""Contracts every registered model, block kind and custom layer keeps (driven by the registries):
feature outputs, gradients to every trainable variable, profile == built model per kind, config
round trips, and an all-integer int8 export."""

import json
import math

import numpy as np
import pytest

import ran_keras
from ran_keras import blocks
from ran_keras.analysis.profiler import profile_model, profile_spec
from ran_keras.backend import keras, tf
from ran_keras.layers import CUSTOM_OBJECTS
from ran_keras.spec import BlockSpec, NetworkSpec

from conftest import ALL_MODELS

#: one example block per kind, after a 16-channel 'conv' stem at 10x10 (odd after stride 2)
KIND_EXAMPLES = {
    "conv": {"channels": 12, "kernel": 3, "stride": 2},
    "dw": {"kernel": 5, "stride": 2},
    "maxpool": {"kernel": 3, "stride": 2},
    "ibn": {"channels": 16, "expansion": 4},
    "collapsed": {"channels": 16, "mid_channels": 8},
    "afrb1": {"channels": 24, "stride": 2, "expansion": 3},
    "afrb2": {"channels": 16, "expansion": 3, "pad_expanded": True},
    "afrb3": {"channels": 16, "expansion": 2},
    "basic": {"channels": 24, "stride": 2},
    "convnext": {"channels": 16, "expansion": 3},
    "convnext_codesign": {"channels": 16, "expansion": 3, "linear_fraction": 0.3, "psi": "bounded_exp",
                          "lower": "expanded"},
    "convnext_down": {"channels": 32},
}

#: constructor arguments of each custom layer that differ from its defaults
LAYER_EXAMPLES = {
    "SharedAlphaPReLU": {"alpha_init": 0.3, "alpha_clip": [0.0, 1.2]},
    "ClipAlpha": {"low": -0.5, "high": 1.5},
    "HardSwish": {},
    "LayerScale": {"init": 0.25},
    "BorderBias": {},
    "EdgePad": {"pad": 2},
    "ChannelLayerNorm": {"epsilon": 1e-6},
    "BoundedExp": {"limit": 3.0},
    "Rsqrt": {"floor": 1e-5},
}


def _size(spec):
    """The smallest square input with every stage at least 2x2."""
    return 2 * spec.total_stride


# --- feature outputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_only_gives_the_named_stage_outputs(name):
    spec = ran_keras.get_spec(name)
    size = _size(spec) + 3                      # not a multiple of the stride: the padding convention shows
    info = spec.feature_info
    assert [f.index for f in info] == list(range(len(spec.stages)))
    assert all(b.reduction >= a.reduction for a, b in zip(info, info[1:]))
    assert info[-1].reduction * math.prod(b.get("stride", 1) or 1 for b in spec.head) == spec.total_stride
    picked = spec.default_out_indices
    assert picked[-1] == len(info) - 1 and len({info[i].reduction for i in picked}) == len(picked)
    model = ran_keras.create_model(name, (size, size, 3), features_only=True)
    outs = model(np.zeros((1, size, size, 3), "float32"), training=False)
    assert model.output_names == [f"{name}_{info[i].name}" for i in picked]
    rows = profile_spec(spec, (size, size, 3), include_top=False).layers
    last = {f.index: [r for r in rows if r.name.startswith(f"{name}_{f.block}_")][-1] for f in info}
    assert [tuple(o.shape) for o in outs] == [(1,) + tuple(last[i].output_shape) for i in picked]
    assert all(last[i].output_shape[2] == info[i].channels for i in picked)
    for o, i in zip(outs, picked):              # 'same' rounds up, 'valid' stems and downsamplings down
        assert size // info[i].reduction <= o.shape[1] <= -(-size // info[i].reduction)


def test_out_indices_pick_count_from_the_end_and_refuse_bad_values():
    spec = ran_keras.get_spec("ran_e_gt")
    model = ran_keras.create_model(spec, (64, 64, 3), features_only=True, out_indices=(0, -1))
    assert model.output_names == ["ran_e_gt_stage1", "ran_e_gt_stage10"]
    assert "ran_e_gt_head_block1_conv" not in [layer.name for layer in model.layers]   # nothing built past it
    with pytest.raises(ran_keras.SpecError, match=r"out_indices: ran_e_gt has 10 stages, so indices must be in -10..9"):
        ran_keras.create_model(spec, (64, 64, 3), features_only=True, out_indices=(10,))
    with pytest.raises(ran_keras.SpecError, match="only with features_only=True"):
        ran_keras.create_model(spec, (64, 64, 3), out_indices=(1,))


# --- gradients ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_trainable_variable_receives_a_gradient(name):
    """Inference mode, so stochastic depth drops nothing; BN moving statistics are not trainable."""
    spec = ran_keras.get_spec(name)
    size = _size(spec)
    model = ran_keras.create_model(spec, (size, size, 3), classes=5, seed=1, classifier_activation=None)
    x = tf.random.stateless_normal((2, size, size, 3), seed=(1, 2))
    with tf.GradientTape() as tape:
        y = model(x, training=False)
        loss = tf.reduce_sum(y * tf.random.stateless_normal(tf.shape(y), seed=(3, 4)))
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.name for v, g in zip(model.trainable_variables, grads)
               if g is None or not np.any(np.asarray(tf.convert_to_tensor(g)) != 0)]
    assert missing == []
    alphas = [v for v in model.trainable_variables if v.name.endswith("alpha:0")]
    assert len(alphas) == sum(b.kind in blocks.AFRB_KINDS for b in spec.blocks())


# --- every block kind: expand -> build -> profile ----------------------------------------------------

def test_every_block_kind_has_an_example():
    assert sorted(KIND_EXAMPLES) == sorted(blocks.KINDS)


@pytest.mark.parametrize("kind", sorted(KIND_EXAMPLES))
def test_block_kind_profile_equals_the_built_layers(kind):
    spec = NetworkSpec(name="k", activation="relu6", input_size=10,
                       stem=(BlockSpec("conv", channels=16, kernel=3, stride=1),),
                       stages=((BlockSpec(kind, **KIND_EXAMPLES[kind]),),))
    model = ran_keras.create_model(spec, (10, 10, 3), classes=3, seed=0)
    analytic, built = profile_spec(spec, (10, 10, 3), classes=3), profile_model(model)
    rows = lambda prof: sorted((r.name, r.output_shape, r.macs, r.nonlinear_units) for r in prof.layers)  # noqa: E731
    assert dict(analytic.by_layer()) == dict(built.by_layer())
    assert rows(analytic) == rows(built)


# --- custom layers -------------------------------------------------------------------------------------

def test_every_custom_layer_has_an_example():
    assert sorted(LAYER_EXAMPLES) == sorted(k.split(">", 1)[1] for k in CUSTOM_OBJECTS)


@pytest.mark.parametrize("key", sorted(CUSTOM_OBJECTS))
def test_custom_object_config_round_trips_through_keras_serialization(key):
    cls = CUSTOM_OBJECTS[key]
    obj = cls(**LAYER_EXAMPLES[cls.__name__])
    config = keras.saving.serialize_keras_object(obj)
    assert config["registered_name"] == key
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
    assert type(again) is cls and again.get_config() == obj.get_config()


# --- int8 export ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_int8_export_has_no_float_tensor(name, tmp_path):
    from ran_keras.export.pipeline import export_model
    spec = ran_keras.get_spec(name)
    size = _size(spec)
    report = export_model(name, tmp_path / f"{name}.tflite", input_size=size, classes=10, calibration="random",
                          samples=2, compare=False)
    assert report.info.float_tensors == [] and report.info.inputs[0].dtype == "INT8"
