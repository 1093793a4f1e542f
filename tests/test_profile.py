"""The analytic profiler: hand calculations, the paper's figures, agreement with built models."""

import pytest

import ran_keras
from ran_keras import registry
from ran_keras.analysis.profiler import profile_model, profile_spec
from ran_keras.ir.costs import conv_macs
from ran_keras.report import parse_count, printed_tolerance
from ran_keras.spec import BlockSpec, NetworkSpec

from conftest import ALL_MODELS


def one_block(block, cin=16, size=8, act="relu"):
    return NetworkSpec(name="one", stem=(BlockSpec("conv", channels=cin, kernel=1, norm=None, activation="linear"),),
                       stages=((block,),), activation=act, input_size=size)


def block_rows(spec, size=8):
    prof = profile_spec(spec, (size, size, 3), include_top=False)
    return [r for r in prof.layers if "_stage1_" in r.name]


def test_paper_section_2_1_ibn_vs_regular_conv_macs_and_units():
    n, hw = 16, 8
    ibn = block_rows(one_block(BlockSpec("ibn", channels=n, expansion=6), cin=n))
    pointwise = sum(r.macs for r in ibn if r.mac_kind == "conv")
    assert pointwise == 12 * n * n * hw * hw                      # 12 n^2 HW
    assert sum(r.nonlinear_units for r in ibn) == 12 * n           # 6n + 6n ReLU units
    m = 18
    conv = block_rows(one_block(BlockSpec("collapsed", channels=m), cin=m))
    assert sum(r.macs for r in conv) == 9 * m * m * hw * hw        # 9 m^2 HW
    assert sum(r.nonlinear_units for r in conv) == m               # BN -> ReLU -> Conv has m units


def test_afrb_counts_both_prelus_and_one_alpha():
    rows = block_rows(one_block(BlockSpec("afrb2", channels=16, expansion=4)))
    alpha = [r for r in rows if r.name.endswith("_alpha")]
    assert [r.nonlinear_units for r in alpha] == [16, 64]
    assert sum(r.params for r in alpha) == 1


def test_afrb3_collapses_to_the_macs_of_a_collapsed_afrb1():
    c = 32
    pair = block_rows(one_block(BlockSpec("collapsed", channels=c, mid_channels=c // 2), cin=c))
    single = block_rows(one_block(BlockSpec("collapsed", channels=c), cin=c))
    assert sum(r.macs for r in pair) == sum(r.macs for r in single) == 9 * c * c * 64
    ibn = block_rows(one_block(BlockSpec("afrb3", channels=c, expansion=6), cin=c))
    expands = [r for r in ibn if r.name.endswith("_expand")]
    assert [r.output_shape[-1] for r in expands] == [6 * c, 6 * c]  # both expand to max(C/2, C) * e


def test_conv_macs_and_stride_rounding():
    assert conv_macs(4, 4, 3, 8, 16) == 4 * 4 * 9 * 8 * 16
    rows = block_rows(one_block(BlockSpec("conv", channels=8, stride=2)), size=7)
    assert rows[0].output_shape == (4, 4, 8)


def test_parse_and_printed_tolerance():
    assert parse_count("4.7M") == 4.7e6 and parse_count("1.8B") == 1.8e9 and parse_count("590M") == 590e6
    assert printed_tolerance("1.4B") == pytest.approx(0.05e9)
    assert printed_tolerance("590M") == pytest.approx(0.5e6)
    assert printed_tolerance("4.13M") == pytest.approx(0.005e6)
    with pytest.raises(ValueError):
        parse_count("lots")


#: models the paper has figures for; the others are ours (found by a command, issue 15)
PAPER_MODELS = [n for n in ALL_MODELS if registry.get_entry(n).paper is not None]


def test_models_without_paper_figures_name_the_command_that_found_them():
    ours = [n for n in ALL_MODELS if n not in PAPER_MODELS]
    assert all("found by `ran " in registry.get_entry(n).description for n in ours), ours


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_params_and_macs_match_the_paper_at_224(name):
    entry = registry.get_entry(name)
    prof = profile_spec(entry.spec())
    assert prof.input_shape == (224, 224, 3) and prof.classes == 1000
    assert entry.paper.matches("params", prof.params), (prof.params, entry.paper.params)
    assert entry.paper.matches("macs", prof.macs), (prof.macs, entry.paper.macs)


def test_subnetwork_c_total_and_trainable_params():
    prof = profile_spec(ran_keras.get_spec("ran_e_c"))
    assert round(prof.params / 1e6, 2) == 4.67 and round(prof.trainable_params / 1e6, 2) == 4.63


def test_profile_accepts_names_and_specs():
    assert ran_keras.profile("ran_e_gt").macs == profile_spec(ran_keras.get_spec("ran_e_gt")).macs


@pytest.mark.parametrize("name", ALL_MODELS)
def test_spec_profile_equals_built_model_layer_by_layer(name):
    spec = ran_keras.get_spec(name)
    model = ran_keras.create_model(spec, input_shape=(64, 64, 3), classes=10)
    analytic = profile_spec(spec, (64, 64, 3), classes=10).by_layer()
    built = profile_model(model).by_layer()
    assert set(analytic) == set(built)
    assert dict(analytic) == dict(built)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ran_e_gt", "efficientnet_lite_b0"])
def test_spec_profile_equals_built_model_at_224(name):
    model = ran_keras.create_model(name)
    built = profile_model(model)
    analytic = profile_spec(ran_keras.get_spec(name))
    assert (built.params, built.trainable_params, built.macs, built.nonlinear_units) == (
        analytic.params, analytic.trainable_params, analytic.macs, analytic.nonlinear_units)
    assert built.params == model.count_params()
