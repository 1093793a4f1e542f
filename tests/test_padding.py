"""Padding conventions in the IR: TensorFlow's 'same', 'valid' and PyTorch's 'symmetric' (explicit pad
layers where Keras cannot express it), their shapes and costs, and the Keras layers they build,
checked against TensorFlow's explicit-padding ops; ConvNeXt's unpadded stem; weight initialisation."""

import numpy as np
import pytest

import ran_keras
from ran_keras import ir
from ran_keras.analysis.profiler import profile_model, profile_spec
from ran_keras.backend import keras, tf
from ran_keras.builder import BuildContext
from ran_keras.errors import SpecError
from ran_keras.spec import BlockSpec, NetworkSpec


def _shape(op, size):
    return ir.trace([op], (size, size, 3))[1]


def test_symmetric_sizes_follow_pytorch():
    # floor((n + 2p - k) / s) + 1 with p = (k - 1) // 2
    assert _shape(ir.Conv("c", 8, 7, 2, padding="symmetric"), 38)[:2] == (19, 19)
    assert _shape(ir.Conv("c", 8, 3, 2, padding="symmetric"), 38)[:2] == (19, 19)
    assert _shape(ir.MaxPool("p", 3, 2, "symmetric"), 19)[:2] == (10, 10)
    assert _shape(ir.Conv("c", 8, 4, 4, padding="valid"), 226)[:2] == (56, 56)
    assert _shape(ir.Conv("c", 8, 4, 4, padding="same"), 226)[:2] == (57, 57)
    leaves, _ = ir.trace([ir.Conv("c", 8, 3, 2, padding="symmetric")], (38, 38, 3))
    assert [(l.op.row_label(), l.out_shape) for l in leaves] == [("ZeroPadding2D", (40, 40, 3)), ("Conv2D", (19, 19, 8))]
    leaves, _ = ir.trace([ir.DepthwiseConv("d", 3, 1, padding="symmetric")], (9, 9, 4))
    assert len(leaves) == 1 and leaves[0].op.keras_padding() == "same"  # stride 1, odd kernel: Keras' own 'same'
    with pytest.raises(ValueError, match="padding must be one of same, valid, symmetric, got 'full'"):
        ir.Conv("c", 8, 3, padding="full")


def _apply(op, x):
    inputs = keras.Input(x.shape[1:])
    spec = NetworkSpec("t", stages=((BlockSpec("conv", channels=4),),))
    model = keras.Model(inputs, op.keras(inputs, "t", BuildContext(spec, seed=0)))
    return model, model(x).numpy()


def test_symmetric_conv_equals_tensorflow_explicit_padding():
    x = np.random.default_rng(0).standard_normal((1, 10, 10, 3)).astype(np.float32)
    model, got = _apply(ir.Conv("c", 4, 3, 2, padding="symmetric"), x)
    kernel = model.get_layer("t_c").kernel
    want = tf.nn.conv2d(x, kernel, 2, padding=[[0, 0], [1, 1], [1, 1], [0, 0]]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    same = tf.nn.conv2d(x, kernel, 2, padding="SAME").numpy()
    assert not np.allclose(got, same, atol=1e-3)  # TF's 'same' pads (0, 1) here: a different function


def test_max_pool_fills_match_minus_infinity_padding():
    x = -np.abs(np.random.default_rng(1).standard_normal((1, 8, 8, 2))).astype(np.float32)  # all negative
    want = tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-np.inf), 3, 2, "VALID").numpy()
    _, edge = _apply(ir.MaxPool("p", 3, 2, "symmetric", "edge"), x)
    np.testing.assert_array_equal(edge, want)
    _, zeros = _apply(ir.MaxPool("p", 3, 2, "symmetric", "zeros"), x)
    assert zeros.max() == 0.0 and want.max() < 0  # zeros are exact only for non-negative inputs
    _, relu_zeros = _apply(ir.MaxPool("p", 3, 2, "symmetric", "zeros"), -x)
    np.testing.assert_array_equal(relu_zeros, tf.nn.max_pool2d(
        tf.pad(-x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-np.inf), 3, 2, "VALID").numpy())


def test_profile_and_model_agree_with_symmetric_padding_at_odd_sizes():
    spec = ran_keras.get_spec("resnet18")
    model = ran_keras.create_model(spec, input_shape=(38, 38, 3), classes=10)
    assert dict(profile_spec(spec, (38, 38, 3), classes=10).by_layer()) == dict(profile_model(model).by_layer())
    assert model.get_layer("resnet18_stem_block2_pool").output_shape == (None, 10, 10, 64)
    assert model.get_layer("resnet18_stage1_block1_bn1").epsilon == 1e-5
    edge = spec.replace(name="r18e", stem=(spec.stem[0], spec.stem[1].replace(fill="edge")))
    model = ran_keras.create_model(edge, input_shape=(37, 37, 3), classes=10)
    assert type(model.get_layer("r18e_stem_block2_pool_pad")).__name__ == "EdgePad"
    assert dict(profile_spec(edge, (37, 37, 3), classes=10).by_layer()) == dict(profile_model(model).by_layer())


def test_convnext_stem_and_downsampling_are_unpadded():
    spec = ran_keras.get_spec("convnext_tiny")
    prof = profile_spec(spec, (226, 226, 3))
    shapes = {row.name: row.output_shape for row in prof.layers}
    assert shapes["convnext_tiny_stem_block1_conv"][:2] == (56, 56)
    assert shapes["convnext_tiny_stage2_block1_conv"][:2] == (28, 28)
    assert prof.macs == profile_spec(spec).macs  # 226 drops the same rows 224 never had
    assert spec.stages[1][0].padding == "valid" and spec.stem[0].padding == "valid"


def test_spec_fields_round_trip_and_are_checked():
    spec = ran_keras.get_spec("resnet18")
    again = NetworkSpec.from_json(spec.to_json())
    assert again == spec and again.padding == "symmetric" and again.stem[1].fill == "zeros"
    with pytest.raises(SpecError, match="padding: must be 'same' .TensorFlow. or 'symmetric' .PyTorch., got 'valid'"):
        spec.replace(padding="valid")
    with pytest.raises(SpecError, match="weight_init: must be one of he_fan_out, trunc_normal_0.02"):
        spec.replace(weight_init="glorot")
    with pytest.raises(SpecError, match=r"stem\[0\].padding: must be one of .same., .valid., .symmetric. or null"):
        NetworkSpec.from_dict(dict(spec.to_dict(), stem=[dict(spec.stem[0].to_dict(), padding="full")]))


def test_weight_init_follows_the_spec():
    convnext = ran_keras.create_model("convnext_tiny", input_shape=(32, 32, 3), seed=0)
    kernel = convnext.get_layer("convnext_tiny_stage3_block2_expand").kernel.numpy()
    assert kernel.std() == pytest.approx(0.02, rel=0.02) and abs(kernel).max() > 0.06  # N(0, 0.02), not cut at 2 std
    head = convnext.get_layer("convnext_tiny_predictions").kernel.numpy()
    assert head.std() == pytest.approx(0.02, rel=0.02)
    resnet = ran_keras.create_model("resnet18", input_shape=(32, 32, 3), seed=0)
    conv = resnet.get_layer("resnet18_stage3_block1_conv2").kernel.numpy()  # He fan-out: var 2 / (9 * 256), truncated
    assert conv.std() == pytest.approx(np.sqrt(2 / (9 * 256)), rel=0.05)


def test_ran_e_stem_is_the_references():
    """No bias (16 params fewer than before issue 14) and ImageNet mean/std, as ARM-software's RAN_e."""
    spec = ran_keras.get_spec("ran_e_c")
    prof = profile_spec(spec)
    assert (prof.params, prof.trainable_params) == (4_673_272, 4_634_872)
    assert spec.stem[0].bias is False and spec.input_mean == (123.675, 116.28, 103.53)
