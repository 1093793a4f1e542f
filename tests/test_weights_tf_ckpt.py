"""``ran_keras.weights.tf_ckpt`` and the RAN-e reference key map.

``reference_like_ran_e`` below rebuilds the *structure* of the reference RAN-e Keras model (our own code,
from the facts in ``tf_ckpt``'s docstring: layer kinds and order, the collapsed block as one custom layer
with ``preceding_bn``/``collapsed_conv1``/... attributes, bias-free stem, in-graph ImageNet normalisation,
the reference's layer names) and saves it the way the reference's ModelCheckpoint does (``save_weights``
of a compiled model with legacy RMSprop slots). The tests then check that the keys Keras writes are exactly
``ran_e_reference_keys`` for our ``ran_e_c`` / ``ran_e_gt``, that the map loads every weight, and that
our model then computes the same logits as the reference-like one (ours fed the normalised images).
"""

import numpy as np
import pytest

import ran_keras
from ran_keras.backend import keras, tf
from ran_keras.data.photos import normalize
from ran_keras.weights.importer import read_source
from ran_keras.models.ran_e import SUBNET_C, SUBNET_GT
from ran_keras.weights import WeightsError
from ran_keras.weights.keymaps import ran_e_reference_keys, ran_e_reference_rules
from ran_keras.weights.mapping import load_weights
from ran_keras.weights.tf_ckpt import (OBJECT_GRAPH, is_bookkeeping, list_variables, read_variables, resolve_prefix,
                                       strip_key, write_checkpoint)

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


# -- generic reading and writing ---------------------------------------------------------------------------------

def test_write_list_read_and_bookkeeping(tmp_path):
    values = {"layer_with_weights-0/kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3),
              "layer_with_weights-1/gamma": np.ones(3, np.float32),
              "layer_with_weights-1/gamma/.OPTIMIZER_SLOT/optimizer/rms": np.zeros(3, np.float32),
              "optimizer/iter": np.array(350, np.int64), "save_counter": np.array(1, np.int64),
              OBJECT_GRAPH: np.array(b"proto bytes")}
    prefix = write_checkpoint(tmp_path / "run" / "model.ckpt-0350", values)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.ckpt-0350.data-00000-of-00001",
                                                                     "model.ckpt-0350.index"]
    assert list_variables(prefix) == {"layer_with_weights-0/kernel": (1, 1, 2, 3), "layer_with_weights-1/gamma": (3,)}
    everything = list_variables(prefix + ".index", bookkeeping=True)
    assert "layer_with_weights-1/gamma/.OPTIMIZER_SLOT/optimizer/rms" in everything and OBJECT_GRAPH in everything
    got = read_variables(prefix)
    np.testing.assert_array_equal(got["layer_with_weights-0/kernel"], values["layer_with_weights-0/kernel"])
    only = read_variables(prefix, ["layer_with_weights-1/gamma/.ATTRIBUTES/VARIABLE_VALUE"])
    assert list(only) == ["layer_with_weights-1/gamma"]
    with pytest.raises(WeightsError, match="no variables layer_with_weights-9/kernel"):
        read_variables(prefix, ["layer_with_weights-9/kernel"])
    (tmp_path / "run" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-0350"\n')
    assert resolve_prefix(tmp_path / "run") == prefix


def test_keys_and_refusals(tmp_path):
    assert strip_key("a/b/.ATTRIBUTES/VARIABLE_VALUE") == "a/b" and strip_key("tf1_name/w") == "tf1_name/w"
    for key in (OBJECT_GRAPH, "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE", "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
                "layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/momentum/.ATTRIBUTES/VARIABLE_VALUE",
                "layer-3/.ATTRIBUTES/OBJECT_CONFIG_JSON"):
        assert is_bookkeeping(key), key
    assert not is_bookkeeping("layer_with_weights-0/collapsed_conv1/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    with pytest.raises(WeightsError, match="not a TF checkpoint"):
        list_variables(tmp_path / "nothing")
    with pytest.raises(WeightsError, match="no TF checkpoint in this folder"):
        list_variables(tmp_path)
    (tmp_path / "bad.index").write_bytes(b"not an index")
    with pytest.raises(WeightsError, match="cannot read the TF checkpoint"):
        list_variables(tmp_path / "bad")


# -- the reference RAN-e layout ----------------------------------------------------------------------------------

class CollapsedLike(keras.layers.Layer):
    """The reference's collapsed block: BN -> act -> 3x3 conv -> BN (and a 128 -> 64 -> 128 pair), residual."""

    def __init__(self, cin, cout, stride, **kwargs):
        super().__init__(**kwargs)
        self.residual = stride == 1 and cin == cout
        self.pair = cin == 128 and self.residual
        mid = cout // 2 if self.pair else cout
        bn = dict(momentum=0.99, epsilon=1e-3)
        self.preceding_bn = keras.layers.BatchNormalization(name="bn_preceding", **bn)
        self.collapsed_conv1 = keras.layers.Conv2D(mid, 3, stride, "same", use_bias=False,
                                                   name=f"collapsed_conv1__{mid}_conv2d")
        self.collapsed_bn1 = keras.layers.BatchNormalization(name=f"collapsed_conv1__{mid}_bn", **bn)
        if self.pair:
            self.collapsed_conv2 = keras.layers.Conv2D(cout, 3, 1, "same", use_bias=False,
                                                       name=f"collapsed_conv2__{cout}_conv2d")
            self.collapsed_bn2 = keras.layers.BatchNormalization(name=f"collapsed_conv2__{cout}_bn", **bn)

    def call(self, inputs):
        x = self.collapsed_bn1(self.collapsed_conv1(_hswish(self.preceding_bn(inputs))))
        if self.pair:
            x = self.collapsed_bn2(self.collapsed_conv2(_hswish(x)))
        return x + inputs if self.residual else x


def _hswish(x):
    return x * tf.nn.relu6(x + 3.0) / 6.0


def _conv_bn(x, filters, kernel, stride, name, act=True, depthwise=False):
    conv = (keras.layers.DepthwiseConv2D(kernel, stride, "same", use_bias=False, name=name + "_conv2d") if depthwise
            else keras.layers.Conv2D(filters, kernel, stride, "same", use_bias=False, name=name + "_conv2d"))
    x = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=name + "_bn")(conv(x))
    return keras.layers.Activation(_hswish, name=name + "_activation")(x) if act else x


def _mb_conv(x, cin, cout, kernel, expansion, stride, prefix):
    """The reference's mb_conv_block (expansion on the input width; the 128 -> 128 block as a pair)."""
    pair = cin == 128 and cin == cout
    mid, e = (cout // 2, 6) if pair else (cout, expansion)
    y = _conv_bn(x, cin * e, 1, 1, f"{prefix}expand__{cin * e}") if e != 1 else x
    y = _conv_bn(y, None, kernel, stride, prefix + "depthwise", depthwise=True)
    y = _conv_bn(y, mid, 1, 1, f"{prefix}project__{mid}", act=False)
    if pair:
        dim = max(mid, cout) * e
        y = _conv_bn(y, dim, 1, 1, f"{prefix}expand2__{dim}")
        y = _conv_bn(y, None, kernel, 1, prefix + "depthwise2", depthwise=True)
        y = _conv_bn(y, cout, 1, 1, f"{prefix}project2__{cout}", act=False)
    return keras.layers.Add(name=prefix + "add")([y, x]) if stride == 1 and cin == cout else y


def reference_like_ran_e(rows, size=32, classes=1000):
    """A functional Keras model with the reference RAN-e's structure (see the module docstring)."""
    images = keras.Input((size, size, 3))
    x = keras.layers.Lambda(lambda t: (t - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB), name="normalize")(images)
    x = keras.layers.Conv2D(16, 3, 2, "same", use_bias=False, name="stem_conv2d")(x)
    for i, (cin, cout, kernels, repeats, expansion, stride, collapsed) in enumerate(rows):
        kernels = [kernels] * repeats if isinstance(kernels, int) else list(kernels)
        for j in range(repeats):
            bin_, s = cin if j == 0 else cout, stride if j == 0 else 1
            prefix = f"stack_{i}_mb_conv_block_{j}__k{kernels[j]}_"
            if collapsed[j]:
                x = CollapsedLike(bin_, cout, s, name=prefix + "COLLAPSED_BLOCK_WRAPPER")(x)
            else:
                x = _mb_conv(x, bin_, cout, kernels[j], expansion, s, prefix)
    x = _conv_bn(x, 1344, 1, 1, "top1x1")
    x = _conv_bn(x, None, 7, 1, "topDS", depthwise=True)
    x = keras.layers.GlobalAveragePooling2D(name="top_pool")(x)
    x = keras.layers.Dropout(0.2, name="top_dropout")(x)
    x = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(images, keras.layers.Activation("softmax", name="probs")(x), name="ran_e")


def _randomise(model, seed):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        scale = 0.1 if "kernel" in w.name else 1.0
        values = rng.uniform(0.5, 1.5, w.shape) if "variance" in w.name else rng.normal(0, scale, w.shape)
        w.assign(values.astype(np.float32))


@pytest.fixture(scope="module", params=[("ran_e_gt", SUBNET_GT), ("ran_e_c", SUBNET_C)], ids=["gt", "c"])
def saved_reference(request, tmp_path_factory):
    """(our model name, reference-like model, checkpoint prefix) saved like the reference's ModelCheckpoint."""
    name, rows = request.param
    ref = reference_like_ran_e(rows)
    _randomise(ref, 0)
    ref.compile(optimizer=keras.optimizers.legacy.RMSprop(1e-3, rho=0.9, momentum=0.9, epsilon=1e-3),
                loss="sparse_categorical_crossentropy")
    ref.optimizer._create_all_weights(ref.trainable_variables)  # the RMSprop slots a trained model has
    prefix = str(tmp_path_factory.mktemp(name) / "model.ckpt-0350")
    ref.save_weights(prefix)
    return name, ref, prefix


def test_keras_writes_exactly_the_reference_keys(saved_reference):
    name, ref, prefix = saved_reference
    ours = ran_keras.create_model(name, input_shape=(32, 32, 3), seed=0)
    expected = dict(ran_e_reference_keys(name, [w.name[:-2] for w in ours.weights]))
    variables = list_variables(prefix)
    assert sorted(variables) == sorted(expected)
    assert len(variables) == len(ref.weights) == len(ours.weights)
    everything = list_variables(prefix, bookkeeping=True)
    slots = [k for k in everything if "/.OPTIMIZER_SLOT/optimizer/" in k]
    assert len(slots) == 2 * len(ref.trainable_weights)  # rms and momentum for each trainable variable
    assert OBJECT_GRAPH in everything and any(k.startswith("optimizer/") for k in everything)
    if name == "ran_e_gt":  # the collapsed 128 -> 64 -> 128 pair is one layer with five sub-layers
        pair = [k for k in variables if "/collapsed_conv2/" in k][0].split("/")[0]
        assert sorted(k.split("/", 1)[1] for k in variables if k.startswith(pair + "/")) == sorted(
            [f"{bn}/{v}" for bn in ("preceding_bn", "collapsed_bn1", "collapsed_bn2")
             for v in ("gamma", "beta", "moving_mean", "moving_variance")] + ["collapsed_conv1/kernel",
                                                                              "collapsed_conv2/kernel"])


def test_reference_checkpoint_loads_and_computes_the_same(saved_reference):
    name, ref, prefix = saved_reference
    ours = ran_keras.create_model(name, input_shape=(32, 32, 3), seed=1, classifier_activation=None)
    names = [w.name[:-2] for w in ours.weights]
    result = load_weights(ours, read_variables(prefix), ran_e_reference_rules(name, names))
    assert result.filled == [] and len(result.arrays) == len(names)
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    ref_logits = keras.Model(ref.input, ref.get_layer("logits").output)(images).numpy()
    our_logits = ours(normalize(images, ours_spec(name))).numpy()  # the spec's mean/std are the reference's
    np.testing.assert_allclose(our_logits, ref_logits, rtol=1e-4, atol=1e-4 * np.abs(ref_logits).max())


def ours_spec(name):
    spec = ran_keras.get_spec(name)
    assert np.allclose(spec.input_mean, MEAN_RGB) and np.allclose(spec.input_std, STDDEV_RGB) and spec.stem[0].bias is False
    return spec


def test_import_refuses_an_unpublished_checkpoint_for_a_published_model(saved_reference):
    """The fixture is named like the published RAN-e checkpoint but is not it; the importer says so,
    and with allow_unpublished loads it through the same rules (and a headless model ignores the logits layer)."""
    name, ref, prefix = saved_reference
    with pytest.raises(WeightsError, match=r"not Arm's published file for .*ran_e_.*allow_unpublished"):
        read_source(prefix + ".index", model=name)
    src = read_source(prefix + ".index", model=name, allow_unpublished=True)
    assert src.layout.name == "ran-e-tf" and src.kind == "tf-checkpoint" and "imported although" in src.notes[0]
    model = ran_keras.create_model(name, input_shape=(32, 32, 3), weights=src, classifier_activation=None)
    images = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    ref_logits = keras.Model(ref.input, ref.get_layer("logits").output)(images).numpy()
    np.testing.assert_allclose(model(normalize(images, ours_spec(name))).numpy(), ref_logits, rtol=1e-4,
                               atol=1e-4 * np.abs(ref_logits).max())
    headless = ran_keras.create_model(name, input_shape=(32, 32, 3), include_top=False, pooling="avg", weights=src)
    assert headless.output_shape == (None, 1344)


def test_reference_keys_refuse_layers_the_reference_lacks():
    supernet = ran_keras.create_model("ran_e_supernet", input_shape=(32, 32, 3), seed=0)
    with pytest.raises(WeightsError, match="the reference RAN-e models have no 'alpha' layers"):
        ran_e_reference_keys("ran_e_supernet", [w.name[:-2] for w in supernet.weights])
