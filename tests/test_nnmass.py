"""NN-Mass (Definition 1, Eq. 4/6/7) and Prop. 3's X = k m, by hand and from specs (no TensorFlow)."""

import subprocess
import sys

import pytest

import ran_keras
from ran_keras.models.convnext import convnext_spec
from ran_keras.analysis.nnmass import (chain_mass, chain_terms, convnext_block_mass, convnext_block_units, k_convnext,
                              k_resnet, nn_mass, resnet_bottleneck_mass, resnet_bottleneck_units)
from ran_keras.spec import BlockSpec, NetworkSpec


def one_block(block, cin):
    """A linear 1x1 stem to ``cin`` channels (no activation, no residual: NN-Mass 0, X 0) and one block."""
    stem = BlockSpec("conv", channels=cin, kernel=1, norm=None, activation="linear")
    return NetworkSpec(name="one", stem=(stem,), stages=((block,),), input_size=16)


def block_row(block, cin):
    rows = nn_mass(one_block(block, cin)).blocks
    assert rows[0].mass == 0 and rows[0].nonlinear_units == 0
    return rows[1]


def test_resnet_bottleneck_by_hand():
    # Fig. 5(a), w1 = 64, e = 4: layers 64 -> 256 -> 256 -> 64
    inputs, possible, actual, density = chain_terms([64, 256, 256, 64])
    assert inputs == 64 + 256 + 256                # i_b = w1 (1 + 2e)
    assert possible == 64 + 64 + 256               # x0->x2, x0->x3, x1->x3: (2 + e) w1
    assert actual == 64 and density == pytest.approx(1 / 6)
    assert chain_mass([64, 256, 256, 64]) == pytest.approx(96.0)      # 576 / 6
    assert resnet_bottleneck_mass(64, 4) == pytest.approx(96.0)       # Eq. 6: (1 + 8) / 6 * 64
    assert resnet_bottleneck_units(64, 4) == 512                      # Eq. 7: 2 e w1


@pytest.mark.parametrize("w, e", [(16, 1), (64, 4), (32, 6), (100, 0.25)])
def test_eq6_is_definition_1_for_any_expansion(w, e):
    assert chain_mass([w, e * w, e * w, w]) == pytest.approx(resnet_bottleneck_mass(w, e))


def test_convnext_block_by_hand_and_from_a_spec():
    # Fig. 5(b), w1 = 96: 7x7 depthwise 96 -> 96, 1x1 96 -> 384, 1x1 384 -> 96
    assert chain_terms([96, 96, 384, 96])[:3] == (96 + 96 + 384, 2 * 96 + 96, 96)
    assert chain_mass([96, 96, 384, 96]) == pytest.approx(192.0)      # 576 * 96 / 288 = 2 w1
    assert convnext_block_mass(96, 384) == pytest.approx(192.0) and convnext_block_units(96, 384) == 384
    row = block_row(BlockSpec("convnext", channels=96), 96)
    assert row.widths == (96, 96, 384, 96) and row.residual
    assert (row.inputs, row.possible, row.actual) == (576, 288, 96)
    assert row.mass == pytest.approx(192.0) and row.nonlinear_units == 384 and row.density == pytest.approx(1 / 3)


def test_basic_block_identity_and_projection():
    identity = block_row(BlockSpec("basic", channels=64), 64)
    assert identity.widths == (64, 64, 64)
    assert identity.mass == pytest.approx(128.0)          # i_b = 128, the one possible skip is present
    assert identity.nonlinear_units == 64                 # the ReLU after the add is not counted (Eq. 7)
    projection = block_row(BlockSpec("basic", channels=128, stride=2), 64)
    assert projection.residual and projection.widths == (64, 128, 128)
    assert projection.mass == pytest.approx(64 + 128)     # i_b = 192, rho = 64 / 64


def test_ibn_with_and_without_residual():
    residual = block_row(BlockSpec("ibn", channels=16, expansion=6), 16)
    assert residual.widths == (16, 96, 96, 16)
    assert residual.mass == pytest.approx(resnet_bottleneck_mass(16, 6))   # (13 / 8) * 16 = 26
    assert residual.nonlinear_units == resnet_bottleneck_units(16, 6)      # 192
    strided = block_row(BlockSpec("ibn", channels=16, expansion=6, stride=2), 16)
    assert not strided.residual and strided.mass == 0 and strided.nonlinear_units == 192


def test_single_layer_residual_block_has_no_skip_to_count():
    row = block_row(BlockSpec("collapsed", channels=16), 16)
    assert row.residual and row.widths == (16, 16) and row.possible == 0 and row.mass == 0


def uniform_ibn(e):
    """IBNs with residuals (the bottleneck chain w, e w, e w, w) in two stages; linear stem and transition."""
    stages = tuple(tuple(BlockSpec("ibn", channels=c, expansion=e) for _ in range(n)) for c, n in ((16, 3), (24, 2)))
    return NetworkSpec(name="uniform", stem=(BlockSpec("conv", channels=16, norm=None, activation="linear"),),
                       stages=(stages[0], (BlockSpec("conv", channels=24, kernel=1, activation="linear"),) + stages[1]))


# k_R = 2e(2 + e) / (1 + 2e) and k_C = 3e / (2 + e), by hand: e = 4 gives 2*4*6/9 and 12/6
# (e = 1 is left out: an IBN without expansion has no expand conv, so it is not the bottleneck chain)
@pytest.mark.parametrize("e, k_r, k_c", [(4, 48 / 9, 2.0), (2, 3.2, 1.5), (3, 30 / 7, 1.8), (6, 96 / 13, 2.25)])
def test_prop3_constants_by_hand_and_as_x_over_m_of_built_specs(e, k_r, k_c):
    assert k_resnet(e) == pytest.approx(k_r) and k_convnext(e) == pytest.approx(k_c)
    ibn = nn_mass(uniform_ibn(e))
    assert ibn.nonlinear_units / ibn.mass == pytest.approx(k_r)
    convnext = nn_mass(convnext_spec("cx", [8, 16], [2, 3], expansion=e))
    assert convnext.nonlinear_units / convnext.mass == pytest.approx(k_c)


@pytest.mark.parametrize("name", ["convnext_tiny", "convnext_small", "convnext_base", "ran_i_tiny", "ran_i_small",
                                  "ran_i_base"])
def test_prop3_identity_on_the_convnext_family(name):
    spec = ran_keras.get_spec(name)
    result = nn_mass(spec)
    widths_depths = [(stage[-1].channels, sum(b.kind == "convnext" for b in stage)) for stage in spec.stages]
    assert result.mass == pytest.approx(sum(2 * w * d for w, d in widths_depths))   # m_C = sum of 2 w1
    assert result.nonlinear_units == sum(4 * w * d for w, d in widths_depths)
    assert result.nonlinear_units == pytest.approx(k_convnext(4) * result.mass)     # k_C = 2 at e = 4
    assert result.k == pytest.approx(2.0)


def test_convnext_tiny_numbers():
    result = nn_mass(ran_keras.get_spec("convnext_tiny"))
    assert result.mass == 13248 and result.nonlinear_units == 26496
    kinds = {b.kind: b.mass for b in result.blocks if b.kind != "convnext"}
    assert kinds == {"conv": 0, "convnext_down": 0}          # stem and downsampling: no residual


@pytest.mark.parametrize("e", [2, 4, 6])
def test_prop3_identity_on_a_uniform_ibn_network(e):
    result = nn_mass(uniform_ibn(e))
    assert result.mass == pytest.approx(resnet_bottleneck_mass(3 * 16 + 2 * 24, e))
    assert result.nonlinear_units == pytest.approx(k_resnet(e) * result.mass)


def test_nn_mass_grows_with_depth_and_width():
    base = nn_mass(convnext_spec("a", [8, 16], [2, 2])).mass
    assert nn_mass(convnext_spec("b", [8, 16], [3, 2])).mass > base
    assert nn_mass(convnext_spec("c", [9, 17], [2, 2])).mass > base


def test_to_dict_and_no_tensorflow():
    data = nn_mass(ran_keras.get_spec("ran_i_tiny")).to_dict(blocks=True)
    assert data["nn_mass"] == 14710 and data["k"] == pytest.approx(2.0) and len(data["blocks"]) == 1 + 30 + 3
    code = ("import sys, ran_keras; from ran_keras.analysis.nnmass import nn_mass; import ran_keras.search.scaling; "
            "nn_mass(ran_keras.get_spec('convnext_base')); "
            "sys.exit('tensorflow' in sys.modules or 'tf_keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
