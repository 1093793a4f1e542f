"""AFRB semantics: the shared alpha, alpha = 0 / 1 behaviour, gradients, clipping."""

import numpy as np
import pytest

import ran_keras
from ran_keras.spec import BlockSpec, NetworkSpec


def afrb_model(alpha, kind="afrb2", channels=8, size=9, seed=0):
    spec = NetworkSpec(name="afrb", input_size=size, alpha_init=alpha,
                       stem=(BlockSpec("conv", channels=channels, kernel=1, norm=None, activation="linear"),),
                       stages=((BlockSpec(kind, channels=channels, expansion=3),),))
    model = ran_keras.create_model(spec, include_top=False, seed=seed)
    _randomise_bn(model, seed)
    return model


def _randomise_bn(model, seed):
    """Non-trivial BN statistics so the checks below are not about identity BNs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.3, m.shape), rng.uniform(0.5, 2.0, v.shape)])


def block_fn(model):
    """The block alone (stem output -> block output) as a function of the stem output."""
    from ran_keras.backend import keras
    stem = model.get_layer("afrb_stem_block1_conv")
    return keras.Model(stem.output, model.output)


def test_one_trainable_scalar_alpha_per_block():
    model = ran_keras.create_model("ran_e_supernet", input_shape=(32, 32, 3))
    alphas = [l for l in model.layers if type(l).__name__ == "SharedAlphaPReLU"]
    assert len(alphas) == 16                                  # one per AFRB (AFRB-3 shares one)
    for layer in alphas:
        assert [tuple(w.shape) for w in layer.trainable_weights] == [()]
    afrb3 = model.get_layer("ran_e_supernet_stage7_block2_alpha")
    assert len(afrb3.inbound_nodes) == 4                       # PReLU(1-a), PReLU(a) in both sub-blocks


def test_alpha_one_makes_the_block_affine_after_a_relu():
    f = block_fn(afrb_model(alpha=1.0, kind="afrb1"))
    rng = np.random.default_rng(1)
    u, v = np.abs(rng.normal(size=(2, 1, 9, 9, 8))).astype("float32")
    lam = 0.3
    lhs = f(lam * u + (1 - lam) * v).numpy()
    rhs = lam * f(u).numpy() + (1 - lam) * f(v).numpy()
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)
    # ... and negative inputs are cut by the leading ReLU = PReLU(1 - 1)
    np.testing.assert_allclose(f(-u).numpy(), f(np.zeros_like(u)).numpy(), atol=1e-6)


def test_alpha_zero_is_ibn_like_linear_in_front_relu_after_dw():
    model = afrb_model(alpha=0.0, kind="afrb1")
    f = block_fn(model)
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=(2, 1, 9, 9, 8)).astype("float32")
    lam = 0.3
    mix = f(lam * u + (1 - lam) * v).numpy()
    assert not np.allclose(mix, lam * f(u).numpy() + (1 - lam) * f(v).numpy(), atol=1e-3)  # non-linear
    alpha = model.get_layer("afrb_stage1_block1_alpha")
    x = rng.normal(size=(5,)).astype("float32")
    np.testing.assert_allclose(alpha(x, complement=True).numpy(), x)            # PReLU(1 - 0) = identity
    np.testing.assert_allclose(alpha(x).numpy(), np.maximum(x, 0))              # PReLU(0) = ReLU


@pytest.mark.parametrize("alpha", [0.2, 0.7])
def test_prelu_pair_slopes(alpha):
    from ran_keras.layers import SharedAlphaPReLU
    layer = SharedAlphaPReLU(alpha)
    x = np.array([-2.0, -0.5, 0.0, 3.0], "float32")
    np.testing.assert_allclose(layer(x).numpy(), np.where(x > 0, x, alpha * x), rtol=1e-6)
    np.testing.assert_allclose(layer(x, complement=True).numpy(), np.where(x > 0, x, (1 - alpha) * x), rtol=1e-6)


def test_gradient_reaches_alpha():
    from ran_keras.backend import tf
    model = afrb_model(alpha=0.4, kind="afrb3")
    alpha = model.get_layer("afrb_stage1_block1_alpha").alpha
    x = np.random.default_rng(3).normal(size=(2, 9, 9, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x, training=True)))
    grad = tape.gradient(loss, alpha)
    assert grad is not None and abs(float(grad)) > 0


def test_alpha_clip_is_enforced_by_training():
    from ran_keras.backend import keras, tf
    spec = NetworkSpec(name="clip", input_size=8, alpha_init=0.5, alpha_clip=(0.0, 1.2),
                       stem=(BlockSpec("conv", channels=4, kernel=1),),
                       stages=((BlockSpec("afrb2", channels=4, expansion=2),),))
    model = ran_keras.create_model(spec, classes=2, classifier_activation=None)
    layer = model.get_layer("clip_stage1_block1_alpha")
    assert layer.get_config()["alpha_clip"] == [0.0, 1.2]
    # a loss that rewards large alpha: without the clip one SGD step would push alpha far past 1.2
    model.compile(keras.optimizers.SGD(10.0), loss=lambda y, p: -layer.alpha + 0.0 * tf.reduce_mean(p))
    model.fit(np.ones((4, 8, 8, 3), "float32"), np.zeros((4, 2), "float32"), epochs=2, verbose=0)
    assert float(layer.alpha) == pytest.approx(1.2, abs=1e-6)


def test_layer_configs_round_trip():
    from ran_keras.layers import HardSwish, SharedAlphaPReLU
    layer = SharedAlphaPReLU(0.3, (0.0, 1.0), name="a")
    again = SharedAlphaPReLU.from_config(layer.get_config())
    assert (again.alpha_init, again.alpha_clip, again.name) == (0.3, (0.0, 1.0), "a")
    x = np.linspace(-4, 4, 9).astype("float32")
    np.testing.assert_allclose(HardSwish()(x).numpy(), x * np.clip(x + 3, 0, 6) / 6, rtol=1e-6)
    with pytest.raises(ValueError, match="low < high"):
        SharedAlphaPReLU(0.5, (1.0, 0.0))
