"""ran_keras.rewrite.fold on Keras models: generic layers, the registered SuperNet, errors, CLI, export."""

import json
import re

import numpy as np
import pytest

import ran_keras
from ran_keras.backend import keras
from ran_keras.builder import load_model
from ran_keras.cli import main
from ran_keras.data.photos import offline_photos
from ran_keras.layers import BorderBias, SharedAlphaPReLU
from ran_keras.analysis.profiler import profile_model, profile_spec
from ran_keras.rewrite.fold import FoldError, fold, format_report
from ran_keras.spec import afrb_sites, map_blocks, realize_afrbs

from conftest import ALL_MODELS

L = keras.layers


def randomize_bn(model, seed=0):
    """Non-trivial inference statistics, so BN shifts (and border maps) are not zero."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.5, c), rng.normal(0, 0.5, c),
                               rng.uniform(0.5, 2.0, c)])
    return model


def set_alphas(model, values):
    layers = [layer for layer in model.layers if isinstance(layer, SharedAlphaPReLU)]
    for layer, value in zip(layers, values):
        layer.set_weights([np.float32(value)])
    return layers


def rel_max(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def batch(shape, n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + tuple(shape)).astype("float32")


def kinds(model):
    return [type(layer).__name__ for layer in model.layers]


# --- generic Keras models ----------------------------------------------------------------------

def test_bn_folds_into_conv_depthwise_and_dense_and_the_original_is_untouched():
    inp = keras.Input((10, 9, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c1")(inp)
    x = L.BatchNormalization(name="c1_bn")(x)
    x = L.ReLU(name="c1_relu")(x)
    x = L.DepthwiseConv2D(5, padding="same", name="d1")(x)
    x = L.BatchNormalization(name="d1_bn")(x)
    x = L.ReLU(6.0)(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(6, name="fc")(x)
    x = L.BatchNormalization(name="fc_bn")(x)
    model = randomize_bn(keras.Model(inp, x))
    before = [w.copy() for w in model.get_weights()]
    new, report = fold(model, samples=0)
    assert "BatchNormalization" not in kinds(new)
    assert {f.layers[0] for f in report.folds if f.kind == "bn"} == {"c1", "d1", "fc"}
    assert new.get_layer("c1").use_bias and new.get_layer("d1").kernel_size == (5, 5)
    x = batch((10, 9, 3))
    assert rel_max(model(x), new(x)) <= 1e-5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert len(model.layers) == 10 and report.before["params"] > report.after["params"]
    assert report.before["macs"] == report.after["macs"] == profile_model(model).macs


def _ibn_like(size, stride, expand_bn=True, seed=0):
    """1x1 expand (+BN) -> 3x3 depthwise (+BN) -> 1x1 project (+BN), no activations."""
    inp = keras.Input((size, size + 1, 4))
    x = L.Conv2D(24, 1, use_bias=not expand_bn, name="b_expand")(inp)
    if expand_bn:
        x = L.BatchNormalization(name="b_expand_bn")(x)
    x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name="b_dw")(x)
    x = L.BatchNormalization(name="b_dw_bn")(x)
    x = L.Conv2D(6, 1, use_bias=False, name="b_project")(x)
    x = L.BatchNormalization(name="b_project_bn")(x)
    model = keras.Model(inp, L.ReLU(name="out")(x))
    for w in model.trainable_weights:
        if "bias" in w.name:
            w.assign(np.random.default_rng(seed).normal(0, 1, w.shape))
    return randomize_bn(model, seed)


@pytest.mark.parametrize("size,stride", [(8, 1), (9, 1), (8, 2), (9, 2)])
def test_linear_chain_folds_exactly_with_a_border_map(size, stride):
    model = _ibn_like(size, stride)
    new, report = fold(model, chains="always", samples=0)
    assert kinds(new) == ["InputLayer", "Conv2D", "BorderBias", "ReLU"]
    (rec,) = [f for f in report.folds if f.kind == "chain"]
    assert rec.border_map and rec.layers[0] == "b_expand" and rec.into == ["b_conv", "b_conv_border"]
    conv = new.get_layer("b_conv")
    assert conv.kernel_size == (3, 3) and conv.strides == (stride, stride) and conv.padding == "same"
    x = batch((size, size + 1, 4))
    assert rel_max(model(x), new(x)) <= 1e-5
    # the border map is zero inside: only the outer ring of output pixels gets a correction
    bmap = new.get_layer("b_conv_border").get_weights()[0]
    assert np.all(bmap[1:-1, 1:-1] == 0) and np.any(bmap != 0)


def test_default_policy_merges_only_plain_smaller_chains():
    new, report = fold(_ibn_like(8, 1), samples=0)            # needs a border map: kept, BNs folded
    assert kinds(new).count("Conv2D") == 2 and report.count("chain") == 0 and report.count("bn") == 3
    plain = _ibn_like(8, 1, expand_bn=False)
    plain.get_layer("b_expand").bias.assign(np.zeros(24))      # no bias before the depthwise conv
    new, report = fold(plain, samples=0)
    assert kinds(new) == ["InputLayer", "Conv2D", "ReLU"] and report.border_maps == 0
    (rec,) = [f for f in report.folds if f.kind == "chain"]
    assert rec.macs_after < rec.macs_before
    x = batch((8, 9, 4))
    assert rel_max(plain(x), new(x)) <= 1e-5
    new, report = fold(plain, chains="none", samples=0)
    assert report.count("chain") == 0 and kinds(new).count("Conv2D") == 2


@pytest.mark.parametrize("kind", ["Conv2D", "DepthwiseConv2D", "Dense"])
def test_residual_identity_folds_into_the_kernel(kind):
    inp = keras.Input((7, 6, 5))
    layer = {"Conv2D": lambda: L.Conv2D(5, 3, padding="same", name="r_conv"),
             "DepthwiseConv2D": lambda: L.DepthwiseConv2D(3, padding="same", name="r_conv"),
             "Dense": lambda: L.Dense(5, name="r_conv")}[kind]()
    y = L.BatchNormalization(name="r_bn")(layer(inp))
    out = L.Add(name="r_add")([y, inp])
    model = randomize_bn(keras.Model(inp, L.ReLU()(out)))
    new, report = fold(model, samples=0)
    assert kinds(new) == ["InputLayer", kind, "ReLU"]
    assert [f.kind for f in report.folds] == ["bn"] and report.folds[0].residual
    assert "r_add" in report.folds[0].layers
    x = batch((7, 6, 5))
    assert rel_max(model(x), new(x)) <= 1e-5


def test_shared_layers_stay_shared_and_a_bn_after_one_call_folds_into_a_copy():
    inp = keras.Input((6, 6, 3))
    conv = L.Conv2D(3, 3, padding="same", name="s_conv")
    alpha = SharedAlphaPReLU(0.3, name="s_alpha")
    a = L.BatchNormalization(name="s_bn")(conv(inp))
    b = conv(alpha(inp, complement=True))
    model = randomize_bn(keras.Model(inp, L.Add()([alpha(a), b])))
    new, report = fold(model, samples=0)
    assert {"s_conv", "s_conv_fold", "s_alpha"} <= {layer.name for layer in new.layers}
    assert len(new.get_layer("s_alpha").inbound_nodes) == 2
    x = batch((6, 6, 3))
    assert rel_max(model(x), new(x)) <= 1e-5


def test_a_chain_with_an_activation_in_the_middle_is_left_alone_and_reported():
    inp = keras.Input((6, 6, 4))
    x = L.Conv2D(16, 1, name="m_expand")(inp)
    x = L.BatchNormalization(name="m_expand_bn")(x)
    x = L.ReLU(name="m_relu")(x)
    x = L.Conv2D(4, 1, name="m_project")(x)
    model = randomize_bn(keras.Model(inp, x))
    new, report = fold(model, chains="always", samples=0)
    assert kinds(new) == ["InputLayer", "Conv2D", "ReLU", "Conv2D"]
    (skip,) = report.skipped
    assert skip.layers == ["m_expand", "m_relu", "m_project"] and "non-linearity" in skip.reason
    x = batch((6, 6, 4))
    assert rel_max(model(x), new(x)) <= 1e-5


def test_another_layer_between_two_linear_layers_is_reported_as_unsupported_not_as_a_non_linearity():
    inp = keras.Input((6, 6, 4))
    x = L.Conv2D(8, 1, name="p_conv")(inp)
    x = L.GlobalAveragePooling2D(name="p_pool")(x)
    model = keras.Model(inp, L.Dense(3, name="p_fc")(x))
    _, report = fold(model, chains="always", samples=0)
    (skip,) = report.skipped
    assert skip.layers == ["p_conv", "p_pool", "p_fc"]
    assert "an unsupported layer (GlobalAveragePooling2D)" in skip.reason and "non-linearity" not in skip.reason


def _afrb_like(dilation=1, groups=1, size=8):
    """A hand-built AFRB with alpha = 1 whose depthwise conv is dilated or expansion grouped."""
    inp = keras.Input((size, size, 4))
    alpha = SharedAlphaPReLU(1.0, name="u_alpha")
    x = alpha(inp, complement=True)
    x = L.Conv2D(8, 1, use_bias=False, groups=groups, name="u_expand")(x)
    x = L.BatchNormalization(name="u_expand_bn")(x)
    x = L.DepthwiseConv2D(3, padding="same", dilation_rate=dilation, use_bias=False, name="u_dw")(x)
    x = L.BatchNormalization(name="u_dw_bn")(x)
    x = alpha(x)
    x = L.Conv2D(4, 1, use_bias=False, name="u_project")(x)
    return randomize_bn(keras.Model(inp, L.BatchNormalization(name="u_project_bn")(x)))


@pytest.mark.parametrize("dilation,groups,needle", [(2, 1, "dilation_rate=(2, 2)"), (1, 2, "groups=2")])
def test_grouped_and_dilated_convolutions_raise_a_clear_error(dilation, groups, needle):
    model = _afrb_like(dilation, groups)
    with pytest.raises(FoldError, match=re.escape(needle)) as err:
        fold(model, samples=0)
    assert "on_unsupported='skip'" in str(err.value)
    new, report = fold(model, on_unsupported="skip", samples=0)
    assert report.count("afrb") == 0 and any("AFRB not collapsed" in s.reason for s in report.skipped)
    assert any(isinstance(layer, SharedAlphaPReLU) for layer in new.layers)
    x = batch((8, 8, 4))
    assert rel_max(model(x), new(x)) <= 1e-5


def test_grouped_conv_in_a_chain_with_chains_always():
    inp = keras.Input((6, 6, 4))
    x = L.Conv2D(8, 1, groups=2, name="g1")(inp)
    x = L.Conv2D(4, 1, name="g2")(x)
    model = keras.Model(inp, x)
    with pytest.raises(FoldError, match="grouped convolution g1 .groups=2"):
        fold(model, chains="always", samples=0)
    new, report = fold(model, chains="always", on_unsupported="skip", samples=0)
    assert kinds(new) == kinds(model) and "grouped convolution" in report.skipped[0].reason


def test_afrb_with_alpha_one_collapses_to_relu_and_one_conv():
    model = _afrb_like()
    new, report = fold(model, samples=0)
    assert kinds(new) == ["InputLayer", "ReLU", "Conv2D", "BorderBias"]
    assert [l.name for l in new.layers][1:] == ["u_act", "u_conv", "u_conv_border"]
    (rec,) = [f for f in report.folds if f.kind == "afrb"]
    assert rec.alpha == 1.0 and rec.layers[0] == "u_alpha" and report.exact
    x = batch((8, 8, 4))
    assert rel_max(model(x), new(x)) <= 1e-5


def test_bad_arguments():
    model = _afrb_like()
    for band in [(1.1, 1.3), (0.9,), "x"]:
        with pytest.raises(FoldError, match="alpha_band"):
            fold(model, band)
    with pytest.raises(FoldError, match="chains must be one of"):
        fold(model, chains="some")
    with pytest.raises(FoldError, match="on_unsupported"):
        fold(model, on_unsupported="ignore")

    class Sub(keras.Model):
        def call(self, x):
            return x
    with pytest.raises(FoldError, match="subclassed"):
        fold(Sub(), samples=0)


def test_a_border_map_needs_a_fixed_input_size():
    inp = keras.Input((None, None, 4))
    x = L.Conv2D(8, 1, use_bias=True, name="v_expand")(inp)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="v_dw")(x)
    model = keras.Model(inp, L.Conv2D(4, 1, name="v_project")(x))
    model.get_layer("v_expand").bias.assign(np.ones(8))
    new, report = fold(model, chains="smaller", samples=0)    # not needed: nothing merges
    assert report.count("chain") == 0
    new, report = fold(model, chains="always", samples=0)     # only depthwise -> project merges
    assert kinds(new) == ["InputLayer", "Conv2D", "Conv2D"] and report.border_maps == 0
    assert any("input size is not fixed" in s.reason and "input_shape=" in s.reason for s in report.skipped)
    # MACs of an unknown size are unknown, per fold as in total (not per pixel)
    (rec,) = [f for f in report.folds if f.kind == "chain"]
    assert rec.macs_before is None and rec.macs_after is None and report.before["macs"] is None
    assert "MACs" in format_report(report)
    x = batch((5, 7, 4))
    assert rel_max(model(x), new(x)) <= 1e-5


def test_an_afrb_that_needs_a_border_map_needs_a_fixed_input_size():
    model = _afrb_like(size=None)
    with pytest.raises(FoldError, match=r"input size is not fixed.*input_shape=.*--skip-unsupported"):
        fold(model, samples=0)
    new, report = fold(model, on_unsupported="skip", samples=0)
    assert report.count("afrb") == 0 and any("AFRB not collapsed" in s.reason for s in report.skipped)
    x = batch((7, 6, 4))
    assert rel_max(model(x), new(x)) <= 1e-5


@pytest.mark.parametrize("stride,size", [(1, 7), (1, 8), (2, 7), (2, 8)])
def test_bn_before_a_depthwise_conv_folds_into_a_depthwise_conv_with_a_border_map(stride, size):
    """BN -> 3x3 depthwise -> BN: the first BN's shift is a bias before the depthwise conv's padding."""
    inp = keras.Input((size, size + 1, 5))
    x = L.BatchNormalization(name="q_pre_bn")(inp)
    x = L.DepthwiseConv2D(3, strides=stride, padding="same", name="q_dw")(x)
    x = L.BatchNormalization(name="q_bn")(x)
    model = randomize_bn(keras.Model(inp, L.ReLU(name="out")(x)), seed=size + stride)
    model.get_layer("q_dw").bias.assign(np.random.default_rng(stride).normal(0, 1, 5))
    new, report = fold(model, chains="always", samples=0)
    assert kinds(new) == ["InputLayer", "DepthwiseConv2D", "BorderBias", "ReLU"]
    (rec,) = [f for f in report.folds if f.kind == "chain"]
    assert rec.border_map and rec.layers == ["q_pre_bn", "q_dw", "q_bn"]
    assert new.layers[1].strides == (stride, stride) and rec.macs_after == rec.macs_before
    x = batch((size, size + 1, 5), n=3)
    assert rel_max(model(x), new(x)) <= 1e-5


def test_saved_folded_model_round_trips(tmp_path):
    model = _ibn_like(8, 2)
    new, _ = fold(model, chains="always", samples=0)
    new.save(tmp_path / "f.keras")
    again = load_model(tmp_path / "f.keras")
    assert any(isinstance(layer, BorderBias) for layer in again.layers)
    x = batch((8, 9, 4))
    np.testing.assert_array_equal(again(x).numpy(), new(x).numpy())


# --- every registered model -----------------------------------------------------------------------

def _smallest_per_family():
    """The cheapest registered model of each family, plus the SuperNet and SubNetwork-C (time budget)."""
    best = {}
    for name in ALL_MODELS:
        family, macs = ran_keras.registry.get_entry(name).family, profile_spec(ran_keras.get_spec(name)).macs
        if family not in best or macs < best[family][1]:
            best[family] = (name, macs)
    return sorted({n for n, _ in best.values()} | {"ran_e_supernet", "ran_e_c"})


@pytest.mark.parametrize("name", _smallest_per_family())
def test_registered_models_fold_their_batchnorms_exactly(name):
    model = randomize_bn(ran_keras.create_model(name, input_shape=(32, 32, 3), classes=10, seed=0,
                                                classifier_activation=None))
    new, report = fold(model, samples=0)
    left = [layer.name for layer in new.layers if isinstance(layer, L.BatchNormalization)]
    assert all(n.endswith("pre_bn") for n in left)            # BN -> act -> conv: nothing to fold into
    assert report.before["macs"] == report.after["macs"]
    bns = {layer.name for layer in model.layers if isinstance(layer, L.BatchNormalization)}
    assert bns - set(left) == {n for f in report.folds for n in f.layers} & bns
    x = batch((32, 32, 3))
    assert rel_max(model(x), new(x)) <= 1e-5


# --- the registered PReLU SuperNet -------------------------------------------------------------

SIZE = 64


@pytest.fixture(scope="module")
def supernet():
    """ran_e_supernet at 64x64 (logits), random BN statistics, alphas: some exactly 1, one 0.9."""
    spec = ran_keras.get_spec("ran_e_supernet")
    model = ran_keras.create_model(spec, input_shape=(SIZE, SIZE, 3), classes=10, seed=1,
                                   classifier_activation=None)
    randomize_bn(model, 1)
    kinds_ = [s.block.kind for s in afrb_sites(spec)]
    ones = {0, 3, kinds_.index("afrb3"), 9, 15}        # a stride-2 AFRB-1, AFRB-2s, the AFRB-3, the last
    values = [1.0 if i in ones else 0.5 for i in range(len(kinds_))]
    set_alphas(model, values)
    return spec, model, values


def test_supernet_with_alphas_at_one_folds_exactly_and_saves_the_expected_macs(supernet):
    spec, model, values = supernet
    new, report = fold(model, samples=2)
    flags = [v == 1.0 for v in values]
    # expected from the specs alone: each collapsed site saves (AFRB MACs - collapsed-block MACs)
    shape = (SIZE, SIZE, 3)
    afrb = profile_spec(spec, shape, classes=10).by_layer()
    collapsed = profile_spec(realize_afrbs(spec, flags), shape, classes=10).by_layer()
    saved = 0
    for site, flag in zip(afrb_sites(spec), flags):
        if flag:
            prefix = f"{spec.name}_{site.prefix}_"
            saved += sum(r["macs"] for n, r in afrb.items() if n.startswith(prefix))
            saved -= sum(r["macs"] for n, r in collapsed.items() if n.startswith(prefix))
    assert saved > 0
    assert report.before["macs"] - report.after["macs"] == saved
    assert report.after["macs"] == profile_spec(realize_afrbs(spec, flags), shape, classes=10).macs
    assert report.count("afrb") == sum(flags) + 1 and report.exact     # the AFRB-3 collapses twice
    x = ((offline_photos(2, SIZE).astype("float32") - 127.5) / 127.5)
    assert rel_max(model(x), new(x)) <= 1e-5
    assert report.output_change["rel_max"] <= 1e-5
    names = {layer.name for layer in new.layers}
    p = "ran_e_supernet_stage7_block2_"                    # the AFRB-3: ReLU -> conv, twice, + residual
    assert {p + "sub1_act", p + "sub1_conv", p + "sub2_act", p + "sub2_conv", p + "add"} <= names
    assert not any(n.startswith(p) and n.endswith(("expand", "dw", "project")) for n in names)
    assert "ran_e_supernet_stage1_block2_alpha" not in names and "ran_e_supernet_stage2_block1_alpha" in names
    assert not any(isinstance(layer, L.BatchNormalization) for layer in new.layers)


def test_supernet_alpha_in_the_band_is_set_to_one_and_the_change_reported(supernet):
    spec, model, values = supernet
    near = list(values)
    near[1] = 0.9                                       # stage2_block1 (AFRB-1, stride 2)
    set_alphas(model, near)
    try:
        new, report = fold(model, samples=2)
        (rec,) = [f for f in report.folds if f.alpha == pytest.approx(0.9)]
        assert rec.kind == "afrb" and rec.drift > 1e-4 and not report.exact
        assert report.output_change["rel_l2"] > 1e-4
        # the approximation is exactly "alpha := 1": equal to the exact fold of that model
        set_alphas(model, [1.0 if v == 0.9 else v for v in near])
        exact_new, _ = fold(model, samples=0)
        x = batch((SIZE, SIZE, 3))
        assert rel_max(exact_new(x), new(x)) <= 1e-5
        band_only, rep1 = fold(model, alpha_band=None, samples=0)
        assert rep1.count("afrb") == report.count("afrb")
    finally:
        set_alphas(model, values)


def test_pad_expanded_afrbs_fold_without_border_maps():
    spec = map_blocks(ran_keras.get_spec("ran_e_supernet"),
                      lambda s: s.block.replace(pad_expanded=True) if s.block.kind.startswith("afrb") else s.block)
    assert profile_spec(spec).macs == profile_spec(ran_keras.get_spec("ran_e_supernet")).macs
    model = randomize_bn(ran_keras.create_model(spec, input_shape=(48, 48, 3), classes=10, seed=2,
                                                classifier_activation=None), 2)
    keras_prof, spec_prof = profile_model(model), profile_spec(spec, (48, 48, 3), classes=10)
    assert (keras_prof.macs, keras_prof.params) == (spec_prof.macs, spec_prof.params)
    assert ran_keras.NetworkSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ran_keras.SpecError, match="pad_expanded: must be true or false"):
        ran_keras.BlockSpec("afrb1", channels=8, pad_expanded="yes")
    set_alphas(model, [1.0 if i % 2 else 0.5 for i in range(16)])
    new, report = fold(model, samples=0)
    assert report.count("afrb") == 9 and report.border_maps == 0
    assert not any(isinstance(layer, (BorderBias, L.ZeroPadding2D)) for layer in new.layers)
    x = batch((48, 48, 3))
    assert rel_max(model(x), new(x)) <= 1e-5


# --- command line ------------------------------------------------------------------------------

def test_cli_folds_a_saved_model(tmp_path, capsys):
    model = _afrb_like()
    src, dest = tmp_path / "in.keras", tmp_path / "out.keras"
    model.save(src)
    assert main(["fold", str(src), str(dest), "--samples", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exact"] and [f["kind"] for f in data["folds"]] == ["afrb"]
    assert data["output_change"]["rel_max"] <= 1e-5 and data["output"] == str(dest)
    x = batch((8, 8, 4))
    assert rel_max(model(x), load_model(dest)(x)) <= 1e-5
    assert main(["fold", str(src), str(tmp_path / "o2.keras"), "--alpha-band", "0.9", "1.1"]) == 0
    out = capsys.readouterr().out
    assert "1 AFRB collapses" in out and "MACs" in out


def test_cli_errors(tmp_path, capsys):
    src = tmp_path / "in.keras"
    _afrb_like(dilation=2).save(src)
    (tmp_path / "dir.keras").mkdir()
    cases = [(["fold", str(tmp_path / "none.keras"), str(tmp_path / "o.keras")], "does not exist"),
             (["fold", str(src), str(src)], "is the input"),
             (["fold", str(src), str(tmp_path / "o.txt")], "must be a .keras or .h5"),
             (["fold", str(src), str(tmp_path / "o.keras"), "--alpha-band", "1.1", "1.2"],
              "--alpha-band LO HI must have LO <= 1 <= HI, got 1.1 1.2"),
             (["fold", str(tmp_path / "dir.keras"), str(tmp_path / "o.keras")], "is a directory"),
             (["fold", str(src), str(tmp_path / "o.keras")], "dilation_rate")]
    for argv, needle in cases:
        assert main(argv) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "o.keras").exists()
    assert main(["fold", str(src), str(tmp_path / "o.keras"), "--skip-unsupported", "--samples", "0"]) == 0
    assert "AFRB not collapsed" in capsys.readouterr().out


# --- int8 TFLite and Vela ----------------------------------------------------------------------

@pytest.mark.slow
def test_folded_supernet_exports_to_int8_and_runs_on_the_npu(supernet, tmp_path):
    from ran_keras.export import tflite, vela
    _, model, values = supernet
    near = [0.95 if i == 1 else v for i, v in enumerate(values)]   # collapsed, in-band and kept AFRBs
    set_alphas(model, near)
    try:
        new, report = fold(model, samples=0)
    finally:
        set_alphas(model, values)
    assert report.count("afrb") == sum(v != 0.5 for v in near) + 1 and report.border_maps > 0
    assert any(isinstance(layer, SharedAlphaPReLU) for layer in new.layers)
    calibration = ((offline_photos(4, SIZE).astype("float32") - 127.5) / 127.5)
    path = tmp_path / "folded.tflite"
    path.write_bytes(tflite.to_tflite(new, calibration))
    result = vela.run_vela(path, "u55-128", tmp_path / "vela")
    assert result.cpu_ops == [] and result.cycles_total > 0
    assert result.nn_macs > 0


@pytest.mark.slow
def test_full_size_supernet_all_alphas_at_one():
    spec = ran_keras.get_spec("ran_e_supernet")
    model = randomize_bn(ran_keras.create_model(spec, classes=1000, seed=0, classifier_activation=None), 3)
    set_alphas(model, [1.0] * len(afrb_sites(spec)))
    new, report = fold(model, samples=2)
    assert report.after["macs"] == profile_spec(realize_afrbs(spec, [True] * 16)).macs
    assert report.output_change["rel_max"] <= 1e-5 and report.count("afrb") == 17


def test_the_fold_band_rule_is_the_search_rule():
    for band in ((1.3, 0.8), (0.1, 0.5)):
        with pytest.raises(FoldError, match="low <= 1 <= high"):
            fold(ran_keras.create_model("ran_e_a", (32, 32, 3), classes=4), band)
