"""ran_keras.quant: every custom layer and registry activation has a quantisation path, every block
kind quantises (every registered model: test_zoo_quant.py), the QAT model converts to int8 without representative
data (no float tensor), the split keeps the function, and float weights come back by name."""

import numpy as np
import pytest

import ran_keras
from ran_keras import activations
from ran_keras.backend import keras, tf
from ran_keras.layers import CUSTOM_OBJECTS
from ran_keras.quant import configs
from ran_keras.quant.qat import QuantizationError, copy_weights_by_name, float_weights, quantize, to_int8
from ran_keras.quant.split import split_for_tfmot
from ran_keras.spec import BlockSpec, NetworkSpec

from test_zoo_contracts import KIND_EXAMPLES

#: the TFLite operator each registry activation must become in a QAT int8 export
ACTIVATION_OPS = {"relu": None, "relu6": None, "hard_swish": "HARD_SWISH", "swish": "LOGISTIC", "gelu": "GELU",
                  "exp": "EXP", "bounded_exp": "EXP", "prelu": "PRELU", "linear": None}


def _calibrate(qat, shape, steps=2):
    """A few training-mode passes so the moving-average ranges exist."""
    x = tf.random.stateless_normal((4,) + tuple(shape), seed=(3, 4))
    for _ in range(steps):
        qat(x, training=True)
    return x


def _tiny(kind_or_act, *, activation="relu6", block=None):
    block = block or BlockSpec("ibn", channels=16, expansion=2)
    return NetworkSpec(name="q", activation=activation, input_size=12,
                       stem=(BlockSpec("conv", channels=16, kernel=3, stride=1),), stages=((block,),))


def test_every_custom_layer_and_activation_has_a_quantisation_path():
    layers = [cls for cls in CUSTOM_OBJECTS.values() if issubclass(cls, keras.layers.Layer)]
    uncovered = [cls.__name__ for cls in layers
                 if cls.__name__ not in configs.LAYER_CONFIGS and cls.__name__ not in configs.SPLIT_LAYERS]
    assert uncovered == []
    assert sorted(ACTIVATION_OPS) == sorted(activations.names())


@pytest.mark.parametrize("act", sorted(ACTIVATION_OPS))
def test_every_activation_quantises_to_an_integer_only_model(act):
    spec = _tiny(act, activation=act)
    model = ran_keras.create_model(spec, (12, 12, 3), classes=4, seed=0)
    qat = quantize(model)
    _calibrate(qat, (12, 12, 3))
    data = to_int8(qat)      # raises FloatTensorError on any float tensor
    from ran_keras.export.flatbuffer import inspect_tflite
    ops = inspect_tflite(data).op_counts
    if ACTIVATION_OPS[act]:
        assert ACTIVATION_OPS[act] in ops, ops


@pytest.mark.parametrize("kind", sorted(KIND_EXAMPLES))
def test_every_block_kind_quantises_to_an_integer_only_model(kind):
    spec = NetworkSpec(name="k", activation="hard_swish", input_size=10,
                       stem=(BlockSpec("conv", channels=16, kernel=3, stride=1),),
                       stages=((BlockSpec(kind, **KIND_EXAMPLES[kind]),),))
    model = ran_keras.create_model(spec, (10, 10, 3), classes=3, seed=0)
    qat = quantize(model)
    _calibrate(qat, (10, 10, 3))
    to_int8(qat)


def test_split_keeps_the_function_and_the_weights_come_back_by_name():
    """afrb3 (two AFRBs sharing one alpha: four calls), a standalone BN (the pre-BN of an afrb2) and
    LayerNorm (convnext) in one net, with trained-looking parameters."""
    spec = NetworkSpec(name="s", activation="hard_swish", input_size=12, alpha_init=0.3,
                       stem=(BlockSpec("conv", channels=16, kernel=3, stride=1, norm="ln", bias=True),),
                       stages=((BlockSpec("afrb3", channels=16, expansion=2),
                                BlockSpec("afrb2", channels=16, expansion=2),
                                BlockSpec("convnext", channels=16, expansion=2)),))
    model = ran_keras.create_model(spec, (12, 12, 3), classes=4, seed=0)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
            layer.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    split = split_for_tfmot(model)
    names = [layer.name for layer in split.layers]
    assert "s_stage1_block1_alpha_complement_2" in names and "s_stage1_block1_alpha_2" in names
    x = tf.random.stateless_normal((2, 12, 12, 3), seed=(1, 2))
    np.testing.assert_allclose(split(x).numpy(), model(x).numpy(), atol=1e-5)
    qat = quantize(model)
    back = ran_keras.create_model(spec, (12, 12, 3), classes=4, seed=7)
    float_weights(back, qat)
    np.testing.assert_allclose(back(x).numpy(), model(x).numpy(), atol=1e-5)


def test_weight_copies_name_what_is_missing():
    model = ran_keras.create_model("ran_e_gt", (32, 32, 3), classes=4, seed=0)
    other = ran_keras.create_model("efficientnet_lite_b0", (32, 32, 3), classes=4, seed=0)
    with pytest.raises(QuantizationError, match="no weight of the same name and shape for: ran_e_gt_stem"):
        copy_weights_by_name(model, other)
    with pytest.raises(QuantizationError, match="no counterpart in .* for: ran_e_gt_stem"):
        float_weights(model, quantize(other))


class Doubling(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


def test_a_layer_without_config_is_refused_by_name():
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Conv2D(4, 3)(Doubling(name="doubling")(inp))
    with pytest.raises(QuantizationError, match=r"custom layer\(s\) doubling \(Doubling\); add one to LAYER_CONFIGS"):
        quantize(keras.Model(inp, out))


@pytest.mark.parametrize("target", ["u55-128", "u65-256"])
def test_qat_int8_of_ran_e_blocks_and_convnext_runs_wholly_on_the_npu(target, tmp_path):
    from ran_keras.export.vela import run_vela
    specs = {
        "ran_e": NetworkSpec(name="qe", activation="hard_swish", input_size=32, alpha_init=0.4,
                             stem=(BlockSpec("conv", channels=16, kernel=3, stride=2),),
                             stages=((BlockSpec("afrb1", channels=16, stride=2, expansion=3),
                                      BlockSpec("afrb2", channels=16, expansion=3, pad_expanded=True),
                                      BlockSpec("afrb3", channels=16, expansion=2),
                                      BlockSpec("collapsed", channels=16, mid_channels=8),
                                      BlockSpec("ibn", channels=24, expansion=4, stride=2)),)),
        "convnext": NetworkSpec(name="qc", activation="gelu", input_size=32, head=(), classifier_norm="ln",
                                stem=(BlockSpec("conv", channels=16, kernel=4, stride=4, norm="ln", bias=True,
                                                activation="linear"),),
                                stages=((BlockSpec("convnext", channels=16, expansion=2),),
                                        (BlockSpec("convnext_down", channels=32),
                                         BlockSpec("convnext", channels=32, expansion=2)))),
    }
    for key, spec in specs.items():
        qat = quantize(ran_keras.create_model(spec, (32, 32, 3), classes=10, seed=0))
        _calibrate(qat, (32, 32, 3))
        path = tmp_path / f"{key}.tflite"
        path.write_bytes(to_int8(qat))
        assert run_vela(path, target, tmp_path / key).cpu_ops == [], key
