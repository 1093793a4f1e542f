"""``ran_keras.weights.mapping`` and ``keymaps``: the generic mapper on synthetic layouts, and the
ConvNeXt / ResNet-18 / EfficientNet-Lite0 key maps on state dicts generated in each source layout
(keys and shapes as facebookresearch ConvNeXt, torchvision and timm name them), loaded into built models.

A load is checked completely: every model weight equals its source tensor after the documented
transform (checked per weight through an independent expectation) and the values are the source's
(the mapped values' sum equals the sum over the source minus ignored keys), so nothing was dropped,
duplicated or left at its initial value.
"""

import argparse
import collections

import numpy as np
import pytest

import ran_keras
from ran_keras.spec import scale_width_depth
from ran_keras.weights import WeightsError
from ran_keras.weights.keymaps import convnext_rules, efficientnet_lite_rules, resnet18_rules
from ran_keras.weights.mapping import (MappingError, fill, ignore, load_weights, map_weights, model_weight_shapes,
                                       render, rule, select_state_dict, split)
from ran_keras.weights.pth import read_pth
from ran_keras.weights.pth_writer import training_checkpoint, write_pth


# -- the generic mapper ----------------------------------------------------------------------------------------

def test_transforms_and_templates():
    rng = np.random.default_rng(0)
    conv, dw, lin = (rng.standard_normal(s).astype(np.float32) for s in [(8, 4, 3, 5), (6, 1, 3, 3), (10, 7)])
    source = {"a.0.conv.weight": conv, "a.0.dw.weight": dw, "a.0.fc.weight": lin, "a.0.fc.bias": np.ones(10),
              "a.0.bn.num_batches_tracked": np.array(3)}
    target = {"m_stage1_block2_conv/kernel": (3, 5, 4, 8), "m_stage1_block2_dw/depthwise_kernel": (3, 3, 6, 1),
              "m_stage1_block2_fc/kernel": (1, 1, 7, 10), "m_stage1_block2_fc/bias": (10,)}
    rules = [rule(r"a\.(?P<i>\d)\.conv\.weight", "{m}_stage{i+1}_block{i+2}_conv/kernel", "conv"),
             rule(r"a\.(?P<i>\d)\.dw\.weight", "{m}_stage{i+1}_block{i+2}_dw/depthwise_kernel", "depthwise"),
             rule(r"a\.(?P<i>\d)\.fc\.weight", "{m}_stage{i+1}_block{i+2}_fc/kernel", "linear", "reshape"),
             rule(r"a\.(?P<i>\d)\.fc\.bias", "{m}_stage{i+1}_block{i+2}_fc/bias"), ignore(r".*num_batches_tracked")]
    out = map_weights(source, target, rules, {"m": "m"})
    np.testing.assert_array_equal(out.arrays["m_stage1_block2_conv/kernel"][1, 2], conv[:, :, 1, 2].T)
    np.testing.assert_array_equal(out.arrays["m_stage1_block2_dw/depthwise_kernel"][2, 0, :, 0], dw[:, 0, 2, 0])
    np.testing.assert_array_equal(out.arrays["m_stage1_block2_fc/kernel"][0, 0], lin.T)
    assert out.ignored == ["a.0.bn.num_batches_tracked"] and out.sources["m_stage1_block2_fc/bias"] == "a.0.fc.bias"
    assert render("{m}_x{j-1}_{j+10}", {"m": "net", "j": "3"}) == "net_x2_13"
    with pytest.raises(WeightsError, match=r"uses \{k\}, which neither"):
        render("{k}", {"m": 1})


def test_fill_split_and_first_match_wins():
    qkv = np.arange(12.0).reshape(6, 2)
    source = {"attn.qkv": qkv, "special.w": np.ones(2), "general.w": np.zeros(3)}
    target = {"q": (3, 2), "kv": (3, 2), "s": (2,), "g": (3,), "stem/bias": (4,)}
    rules = [split(r"attn\.qkv", ["q", "kv"], 0), rule(r"special\.w", "s"), rule(r".*\.w", "g"),
             fill(r".*/bias", 0.5)]
    out = map_weights(source, target, rules)
    np.testing.assert_array_equal(out.arrays["kv"], qkv[3:])
    assert out.arrays["stem/bias"].tolist() == [0.5] * 4 and out.filled == ["stem/bias"]
    assert out.sources["s"] == "special.w" and out.sources["g"] == "general.w"


def test_every_problem_is_listed_and_nothing_partial():
    source = {"a": np.ones(3), "b": np.ones(4), "c": np.ones(2), "d": np.ones(2), "e": np.ones(5), "f": np.ones(1)}
    target = {"A": (3,), "B": (5,), "C": (2,), "M1": (1,), "M2": (7,)}
    rules = [rule("a", "A"), rule("b", "B"), rule("[cd]", "C"), rule("e", "E")]
    with pytest.raises(MappingError) as err:
        map_weights(source, target, rules, what="model 'x'")
    e = err.value
    assert e.unmapped == ["f"] and e.unknown == [("e", "E")] and e.missing == ["M1", "M2"]
    assert e.mismatched == [("b", "B", (4,), (5,))] and e.collisions == [("C", ["c", "d"])]
    text = str(e)
    for line in ["model 'x'; nothing was loaded", "source keys no rule maps (1):\n  f",
                 "e -> E", "left without a value (2):\n  M1\n  M2", "b -> B: (4,) vs (5,)", "C <- c, d"]:
        assert line in text


def test_bad_rules_are_refused():
    with pytest.raises(WeightsError, match="unknown transform 'transpose'"):
        rule("a", "b", "transpose")
    with pytest.raises(WeightsError, match="bad rule pattern"):
        rule("a(", "b")
    with pytest.raises(WeightsError, match="cannot split a tensor of shape .5,. into 2"):
        map_weights({"x": np.ones(5)}, {"p": (2,), "q": (3,)}, [split("x", ["p", "q"])])


def test_select_state_dict():
    ema, plain = {"w": np.ones(1)}, {"w": np.zeros(1)}
    ckpt = {"model": plain, "model_ema": ema, "epoch": 3, "args": argparse.Namespace()}
    assert select_state_dict(ckpt)[1] == "model_ema" and select_state_dict(ckpt, prefer_ema=False)[1] == "model"
    assert select_state_dict({"model": plain, "model_ema": {}})[1] == "model"
    state, which = select_state_dict({"module.a": np.ones(1), "module.b": np.ones(1)})
    assert which == "<state dict>" and sorted(state) == ["a", "b"]
    assert select_state_dict({"state_dict": {"x": np.ones(1)}})[1] == "state_dict"
    with pytest.raises(WeightsError, match="no state dict in the checkpoint: entries optimizer, epoch"):
        select_state_dict({"optimizer": {}, "epoch": 1})


# -- source layouts, generated from the architecture (independently of the rules) ---------------------------------

def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _bn(rng, prefix, c):
    return {f"{prefix}.weight": _rand(rng, c), f"{prefix}.bias": _rand(rng, c), f"{prefix}.running_mean": _rand(rng, c),
            f"{prefix}.running_var": np.abs(_rand(rng, c)), f"{prefix}.num_batches_tracked": np.array(100, np.int64)}


def convnext_state_dict(dims, depths, classes, rng, prefix="", detector=False):
    """facebookresearch ConvNeXt keys (or the RAN-i detector backbone's with ``detector``)."""
    sd = {}
    down = (lambda i: f"{prefix}downsample_{i}") if detector else (lambda i: f"{prefix}downsample_layers.{i}")
    stage = (lambda i: f"{prefix}stage_{i}") if detector else (lambda i: f"{prefix}stages.{i}")
    sd[f"{down(0)}.0.weight"], sd[f"{down(0)}.0.bias"] = _rand(rng, dims[0], 3, 4, 4), _rand(rng, dims[0])
    sd[f"{down(0)}.1.weight"], sd[f"{down(0)}.1.bias"] = _rand(rng, dims[0]), _rand(rng, dims[0])
    for i in range(1, 4):
        sd[f"{down(i)}.0.weight"], sd[f"{down(i)}.0.bias"] = _rand(rng, dims[i - 1]), _rand(rng, dims[i - 1])
        sd[f"{down(i)}.1.weight"] = _rand(rng, dims[i], dims[i - 1], 2, 2)
        sd[f"{down(i)}.1.bias"] = _rand(rng, dims[i])
    for i, (d, n) in enumerate(zip(dims, depths)):
        for j in range(n):
            b = f"{stage(i)}.{j}"
            sd.update({f"{b}.gamma": _rand(rng, d), f"{b}.dwconv.weight": _rand(rng, d, 1, 7, 7),
                       f"{b}.dwconv.bias": _rand(rng, d), f"{b}.norm.weight": _rand(rng, d),
                       f"{b}.norm.bias": _rand(rng, d), f"{b}.pwconv1.weight": _rand(rng, 4 * d, d),
                       f"{b}.pwconv1.bias": _rand(rng, 4 * d), f"{b}.pwconv2.weight": _rand(rng, d, 4 * d),
                       f"{b}.pwconv2.bias": _rand(rng, d)})
    if detector:
        sd["rpn.head.conv.0.0.weight"] = _rand(rng, dims[-1], dims[-1], 3, 3)
        sd["roi_heads.box_head.fc1.weight"] = _rand(rng, 8, dims[-1] * 49)
        return sd
    sd[f"{prefix}norm.weight"], sd[f"{prefix}norm.bias"] = _rand(rng, dims[-1]), _rand(rng, dims[-1])
    sd[f"{prefix}head.weight"], sd[f"{prefix}head.bias"] = _rand(rng, classes, dims[-1]), _rand(rng, classes)
    return sd


def resnet18_state_dict(classes, rng):
    """torchvision resnet18().state_dict() keys and shapes."""
    sd = {"conv1.weight": _rand(rng, 64, 3, 7, 7), **_bn(rng, "bn1", 64)}
    cin = 64
    for s, c in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            b = f"layer{s}.{j}"
            sd.update({f"{b}.conv1.weight": _rand(rng, c, cin if j == 0 else c, 3, 3), **_bn(rng, f"{b}.bn1", c),
                       f"{b}.conv2.weight": _rand(rng, c, c, 3, 3), **_bn(rng, f"{b}.bn2", c)})
            if j == 0 and s > 1:
                sd.update({f"{b}.downsample.0.weight": _rand(rng, c, cin, 1, 1), **_bn(rng, f"{b}.downsample.1", c)})
        cin = c
    sd["fc.weight"], sd["fc.bias"] = _rand(rng, classes, 512), _rand(rng, classes)
    return sd


def efficientnet_lite0_state_dict(classes, rng):
    """timm efficientnet_lite0().state_dict() keys and shapes (stem 32, head 1280, no SE)."""
    sd = {"conv_stem.weight": _rand(rng, 32, 3, 3, 3), **_bn(rng, "bn1", 32),
          "blocks.0.0.conv_dw.weight": _rand(rng, 32, 1, 3, 3), **_bn(rng, "blocks.0.0.bn1", 32),
          "blocks.0.0.conv_pw.weight": _rand(rng, 16, 32, 1, 1), **_bn(rng, "blocks.0.0.bn2", 16)}
    cin = 16
    for s, (k, c, n) in enumerate([(3, 24, 2), (5, 40, 2), (3, 80, 3), (5, 112, 3), (5, 192, 4), (3, 320, 1)], start=1):
        for j in range(n):
            b, mid = f"blocks.{s}.{j}", 6 * cin
            sd.update({f"{b}.conv_pw.weight": _rand(rng, mid, cin, 1, 1), **_bn(rng, f"{b}.bn1", mid),
                       f"{b}.conv_dw.weight": _rand(rng, mid, 1, k, k), **_bn(rng, f"{b}.bn2", mid),
                       f"{b}.conv_pwl.weight": _rand(rng, c, mid, 1, 1), **_bn(rng, f"{b}.bn3", c)})
            cin = c
    sd.update({"conv_head.weight": _rand(rng, 1280, 320, 1, 1), **_bn(rng, "bn2", 1280),
               "classifier.weight": _rand(rng, classes, 1280), "classifier.bias": _rand(rng, classes)})
    return sd


def _expected(array, name):
    """Our layout of a torch tensor, from the target's kind (independent of the rules)."""
    if name.endswith("/depthwise_kernel"):
        return array.transpose(2, 3, 0, 1)
    if name.endswith("/kernel") and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if name.endswith("/kernel") and array.ndim == 2:
        return array.T
    return array


def _check_loaded(model, source, result, spot_checks):
    weights = {w.name[:-2]: w.numpy() for w in model.weights}
    assert set(result.arrays) == set(weights) and not result.filled
    for src, dst in spot_checks.items():
        np.testing.assert_array_equal(weights[dst], np.reshape(_expected(source[src], dst), weights[dst].shape))
    for dst, src in result.sources.items():
        assert weights[dst].shape == result.arrays[dst].shape
        assert np.sum(weights[dst], dtype=np.float64) == pytest.approx(np.sum(source[src], dtype=np.float64), rel=1e-5,
                                                                       abs=1e-3)
    used = {k: v for k, v in source.items() if k not in result.ignored}
    assert len(used) == len(weights)
    assert sum(float(np.sum(v, dtype=np.float64)) for v in weights.values()) == pytest.approx(
        sum(float(np.sum(v, dtype=np.float64)) for v in used.values()), rel=1e-6)


MICRO = dict(wm=1 / 12, dm=0.34)  # ConvNeXt-T at widths [8, 16, 32, 64], depths [1, 1, 3, 1]


@pytest.fixture(scope="module")
def micro_spec():
    return scale_width_depth(ran_keras.get_spec("convnext_tiny"), name="cnx_micro", **MICRO)


def test_convnext_rules_load_a_facebookresearch_state_dict(micro_spec):
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10, seed=0)
    source = convnext_state_dict([8, 16, 32, 64], [1, 1, 3, 1], 10, np.random.default_rng(1))
    result = load_weights(model, source, convnext_rules())
    _check_loaded(model, source, result, {
        "downsample_layers.0.0.weight": "cnx_micro_stem_block1_conv/kernel",
        "downsample_layers.2.0.bias": "cnx_micro_stage3_block1_ln/beta",
        "downsample_layers.3.1.weight": "cnx_micro_stage4_block1_conv/kernel",
        "stages.0.0.dwconv.weight": "cnx_micro_stage1_block1_dw/depthwise_kernel",
        "stages.2.2.pwconv1.weight": "cnx_micro_stage3_block4_expand/kernel",
        "stages.3.0.pwconv2.weight": "cnx_micro_stage4_block2_project/kernel",
        "stages.2.1.gamma": "cnx_micro_stage3_block3_layer_scale/gamma",
        "norm.weight": "cnx_micro_classifier_ln/gamma", "head.weight": "cnx_micro_predictions/kernel"})


def test_published_layout_pth_round_trip_prefers_ema(tmp_path, micro_spec):
    rng = np.random.default_rng(2)
    model_sd = convnext_state_dict([8, 16, 32, 64], [1, 1, 3, 1], 10, rng)
    ema_sd = {k: v + 1 for k, v in model_sd.items()}
    path = write_pth(tmp_path / "RAN_i_micro.pth", training_checkpoint(
        collections.OrderedDict(model_sd), model_ema=ema_sd, args=argparse.Namespace(model="ran_i_tiny", lr=4e-3)))
    ckpt = read_pth(path)
    assert set(ckpt.data) == {"model", "model_ema", "optimizer", "epoch", "scaler", "args"}
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10, seed=0)
    for prefer_ema, offset in ((True, 1), (False, 0)):
        state, which = select_state_dict(ckpt.data, prefer_ema=prefer_ema)
        assert which == ("model_ema" if prefer_ema else "model")
        load_weights(model, state, convnext_rules())
        np.testing.assert_array_equal(model.get_layer("cnx_micro_predictions").bias.numpy(),
                                      model_sd["head.bias"] + offset)


def test_detector_backbone_rules(micro_spec):
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), include_top=False, seed=0)
    source = convnext_state_dict([8, 16, 32, 64], [1, 1, 3, 1], 0, np.random.default_rng(3), "backbone.", detector=True)
    result = load_weights(model, source, convnext_rules("backbone.", detector=True))
    assert sorted(result.ignored) == ["roi_heads.box_head.fc1.weight", "rpn.head.conv.0.0.weight"]
    _check_loaded(model, source, result,
                  {"backbone.stage_2.1.dwconv.weight": "cnx_micro_stage3_block3_dw/depthwise_kernel"})


def test_resnet18_rules_load_a_torchvision_state_dict():
    model = ran_keras.create_model("resnet18", input_shape=(32, 32, 3), classes=10, seed=0)
    source = resnet18_state_dict(10, np.random.default_rng(4))
    result = load_weights(model, source, resnet18_rules())
    assert len(result.ignored) == 20  # one num_batches_tracked per BatchNorm
    _check_loaded(model, source, result, {
        "conv1.weight": "resnet18_stem_block1_conv/kernel",
        "bn1.running_var": "resnet18_stem_block1_bn/moving_variance",
        "layer3.0.downsample.0.weight": "resnet18_stage3_block1_proj/kernel",
        "layer4.1.bn2.weight": "resnet18_stage4_block2_bn2/gamma", "fc.weight": "resnet18_predictions/kernel"})


def test_efficientnet_lite_rules_load_a_timm_state_dict():
    model = ran_keras.create_model("efficientnet_lite_b0", input_shape=(32, 32, 3), classes=10, seed=0)
    source = efficientnet_lite0_state_dict(10, np.random.default_rng(5))
    result = load_weights(model, source, efficientnet_lite_rules())
    _check_loaded(model, source, result, {
        "blocks.0.0.conv_dw.weight": "efficientnet_lite_b0_stage1_block1_dw/depthwise_kernel",
        "blocks.0.0.bn2.bias": "efficientnet_lite_b0_stage1_block1_project_bn/beta",
        "blocks.5.3.conv_pwl.weight": "efficientnet_lite_b0_stage6_block4_project/kernel",
        "blocks.2.1.bn2.running_mean": "efficientnet_lite_b0_stage3_block2_dw_bn/moving_mean",
        "bn2.weight": "efficientnet_lite_b0_head_block1_bn/gamma",
        "classifier.weight": "efficientnet_lite_b0_predictions/kernel"})


def test_a_wrong_checkpoint_loads_nothing(micro_spec):
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10, seed=0)
    before = [w.numpy().copy() for w in model.weights]
    source = convnext_state_dict([8, 16, 32, 64], [1, 1, 3, 1], 10, np.random.default_rng(6))
    del source["stages.2.1.gamma"]
    source["stages.2.9.gamma"] = np.ones(32, np.float32)            # a block the model does not have
    source["head.weight"] = np.ones((1000, 64), np.float32)         # another class count
    source["extra.weight"] = np.ones(2, np.float32)                 # a key no rule knows
    with pytest.raises(MappingError) as err:
        load_weights(model, source, convnext_rules())
    e = err.value
    assert e.unmapped == ["extra.weight"] and e.missing == ["cnx_micro_stage3_block3_layer_scale/gamma"]
    assert e.unknown == [("stages.2.9.gamma", "cnx_micro_stage3_block11_layer_scale/gamma")]
    assert e.mismatched == [("head.weight", "cnx_micro_predictions/kernel", (1000, 64), (64, 10))]
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_model_weight_shapes_are_names_without_suffix(micro_spec):
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10, seed=0)
    shapes = model_weight_shapes(model)
    assert list(shapes)[:2] == ["cnx_micro_stem_block1_conv/kernel", "cnx_micro_stem_block1_conv/bias"]
    assert shapes["cnx_micro_stem_block1_conv/kernel"] == (4, 4, 3, 8)


@pytest.mark.slow
def test_ran_i_tiny_real_shapes():
    """RAN-i-T at its published shapes (20.76M values): dims [64, 128, 256, 511], depths [5, 5, 15, 5]."""
    model = ran_keras.create_model("ran_i_tiny", input_shape=(32, 32, 3), seed=0)
    source = convnext_state_dict([64, 128, 256, 511], [5, 5, 15, 5], 1000, np.random.default_rng(7))
    result = load_weights(model, source, convnext_rules())
    assert sum(a.size for a in result.arrays.values()) == sum(a.size for a in source.values()) == 20_760_131
    assert model.count_params() == 20_760_131  # the paper's 20.76M
    _check_loaded(model, source, result, {"stages.2.14.pwconv2.weight": "ran_i_tiny_stage3_block16_project/kernel"})
