"""Specs: JSON round trips, validation messages, spec-to-spec transforms (no TensorFlow)."""

import json

import pytest

import ran_keras
from ran_keras import blocks
from ran_keras.errors import InputShapeError, SpecError
from ran_keras.spec import (BlockSpec, NetworkSpec, afrb_sites, make_divisible, realize_afrbs, scale_width,
                            with_activation)

from conftest import ALL_MODELS


def tiny(**changes):
    data = {"name": "tiny", "stem": [{"kind": "conv", "channels": 8, "stride": 2}],
            "stages": [[{"kind": "ibn", "channels": 8, "expansion": 2},
                        {"kind": "afrb1", "channels": 16, "stride": 2}]]}
    data.update(changes)
    return data


@pytest.mark.parametrize("name", ALL_MODELS)
def test_registered_spec_round_trips_through_json(name, tmp_path):
    spec = ran_keras.get_spec(name)
    again = NetworkSpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    path = spec.save(tmp_path / f"{name}.json")
    assert NetworkSpec.load(path) == spec
    assert ran_keras.resolve_spec(str(path)) == spec


def test_defaults_are_filled_and_written_out():
    b = BlockSpec("ibn", channels=32)
    assert (b.kernel, b.stride, b.expansion, b.activation, b.mid_channels) == (3, 1, 6, None, None)
    assert b.to_dict() == {"kind": "ibn", "channels": 32, "kernel": 3, "stride": 1, "expansion": 6}
    conv = BlockSpec("conv", channels=4, norm=None)
    assert conv.bias is True and BlockSpec("conv", channels=4).bias is False


@pytest.mark.parametrize("data, path, words", [
    (tiny(stages=[[{"kind": "ibnn", "channels": 8}]]), "stages[0][0].kind", "did you mean 'ibn'"),
    (tiny(stages=[[{"kind": "ibn", "channel": 8}]]), "stages[0][0].channel", "did you mean 'channels'"),
    (tiny(stages=[[{"kind": "ibn"}]]), "stages[0][0].channels", "required"),
    (tiny(stages=[[{"kind": "ibn", "channels": -3}]]), "stages[0][0].channels", "must be positive, got -3"),
    (tiny(stages=[[{"kind": "ibn", "channels": 8, "stride": 3}]]), "stages[0][0].stride", "got 3"),
    (tiny(stages=[[{"kind": "ibn", "channels": "8"}]]), "stages[0][0].channels", "must be an integer"),
    (tiny(stages=[[{"kind": "ibn", "channels": True}]]), "stages[0][0].channels", "must be an integer"),
    (tiny(stages=[[{"kind": "ibn", "channels": 8, "activation": "reluu"}]]), "stages[0][0].activation",
     "did you mean 'relu'"),
    (tiny(stages=[]), "stages", "non-empty"),
    (tiny(stages=[[]]), "stages[0]", "at least one block"),
    (tiny(activation="tanh"), "activation", "accepted: relu, relu6, hard_swish"),
    (tiny(name="9lives"), "name", "must start with a letter"),
    (tiny(widht=3), "widht", "unknown field"),
    (tiny(input_std=[0.0]), "input_std", "must be positive"),
    (tiny(input_mean=[1.0, 2.0]), "input_mean", "must have 1 or input_channels=3"),
    (tiny(alpha_clip=[1.0, 0.5]), "alpha_clip", "low < high"),
    (tiny(version=7), "version", "reads spec version 1"),
])
def test_invalid_specs_name_the_field(data, path, words):
    with pytest.raises(SpecError) as err:
        NetworkSpec.from_dict(data)
    assert err.value.path == path
    assert words in str(err.value)


@pytest.mark.parametrize("block, cin_note", [
    ({"kind": "afrb2", "channels": 16, "stride": 1}, "8 -> 16 channels"),
    ({"kind": "afrb2", "channels": 8, "stride": 2}, "stride 2"),
    ({"kind": "ibn", "channels": 16, "mid_channels": 8}, "8 -> 16 channels"),
    ({"kind": "collapsed", "channels": 8, "stride": 2, "mid_channels": 4}, "stride 2"),
])
def test_blocks_that_cannot_form_a_residual_are_rejected(block, cin_note):
    with pytest.raises(SpecError) as err:
        NetworkSpec.from_dict(tiny(stages=[[{"kind": "conv", "channels": 8}, block]]))
    assert err.value.path == "stages[0][1]"
    assert "needs a residual" in str(err.value) and cin_note in str(err.value)


def test_afrb3_keeps_resolution_and_defaults_mid_to_half():
    with pytest.raises(SpecError, match="afrb3.*must be 1, got 2"):
        BlockSpec("afrb3", channels=16, stride=2)
    assert BlockSpec("afrb3", channels=128).mid_channels == 64


def test_bad_json_and_missing_file_messages(tmp_path):
    with pytest.raises(SpecError, match="not valid JSON"):
        NetworkSpec.from_json("{nope", source="x.json")
    with pytest.raises(SpecError, match="does not exist"):
        ran_keras.resolve_spec(str(tmp_path / "missing.json"))
    with pytest.raises(SpecError, match="must be a JSON object"):
        NetworkSpec.from_dict([1, 2])


def test_input_shape_checks():
    spec = ran_keras.get_spec("ran_e_c")
    assert spec.total_stride == 32
    with pytest.raises(InputShapeError, match="total stride is 32"):
        spec.check_input_shape((16, 224, 3))
    with pytest.raises(InputShapeError, match="takes input_channels=3"):
        spec.check_input_shape((224, 224, 1))
    with pytest.raises(InputShapeError, match=r"\(height, width, channels\)"):
        spec.check_input_shape((224, 224))
    assert spec.check_input_shape((None, None, 3)) == (None, None, 3)


def test_specs_and_blocks_are_immutable():
    spec = ran_keras.get_spec("ran_e_gt")
    with pytest.raises(Exception):
        spec.name = "x"
    with pytest.raises(Exception):
        spec.stages[0][0].channels = 3


def test_with_activation_keeps_explicit_linear_and_afrb():
    spec = with_activation(ran_keras.get_spec("ran_e_supernet"), "relu6")
    assert spec.activation == "relu6"
    assert spec.stem[0].activation == "linear"
    assert {b.kind for b in spec.blocks()} >= {"afrb1", "afrb2", "afrb3"}
    eff = with_activation(ran_keras.get_spec("efficientnet_lite_b0"), "hswish")
    assert eff.activation == "hard_swish"


def test_scale_width_roundings():
    spec = ran_keras.get_spec("ran_e_supernet_ibn")
    w = scale_width(spec, 0.91, rounding="floor")
    assert w.stem[0].channels == 14 and w.head[0].channels == 1344
    assert [b.channels for b in w.stages[0]] == [29]
    assert w.stages[6][1].mid_channels == 58
    assert scale_width(spec, 0.91, rounding="round").stages[0][0].channels == 29
    assert scale_width(spec, 0.91, rounding="floor", stem=False).stem[0].channels == 16
    assert make_divisible(32 * 0.91) == 32 and make_divisible(10) == 16
    with pytest.raises(SpecError, match="rounding"):
        scale_width(spec, 0.5, rounding="ceil")
    with pytest.raises(SpecError, match="positive"):
        scale_width(spec, 0)


def test_subnetwork_a_is_the_supernet_with_its_five_collapsed_afrbs():
    from ran_keras.models.ran_e import SUBNET_A_COLLAPSED
    supernet = ran_keras.get_spec("ran_e_supernet")
    assert len(afrb_sites(supernet)) == 16 and sum(SUBNET_A_COLLAPSED) == 5
    derived = realize_afrbs(supernet, SUBNET_A_COLLAPSED, name="ran_e_a")
    registered = ran_keras.get_spec("ran_e_a")
    assert derived.stages == registered.stages
    assert realize_afrbs(supernet, [False] * 16, name="x").stages == ran_keras.get_spec("ran_e_supernet_ibn").stages


def test_realize_afrbs_by_path_and_errors():
    supernet = ran_keras.get_spec("ran_e_supernet")
    out = realize_afrbs(supernet, {"stages[6][1]": True})
    slot = out.stages[6][1]
    assert slot.kind == "collapsed" and slot.mid_channels == 64
    with pytest.raises(SpecError, match="not an AFRB"):
        realize_afrbs(supernet, {"stages[99][0]": True})
    with pytest.raises(SpecError, match="has 16 AFRBs, got 3"):
        realize_afrbs(supernet, [True] * 3)


def test_every_kind_is_documented_and_has_fields():
    for kind in blocks.KINDS.values():
        assert kind.doc and kind.fields is not None


def test_spec_json_is_plain_data():
    data = json.loads(ran_keras.get_spec("ran_e_c").to_json())
    assert data["format"] == "ran-keras-spec" and data["stages"][6][1]["mid_channels"] == 64
