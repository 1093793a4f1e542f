"""The ConvNeXt co-design block (paper Sec. 4): spec kind, Table 4 relations, psi, exact restructuring."""

import numpy as np
import pytest

import ran_keras
from ran_keras.analysis.nnmass import nn_mass
from ran_keras.analysis.profiler import profile_spec
from ran_keras.errors import SpecError
from ran_keras.models.convnext import convnext_spec
from ran_keras.rewrite import codesign, restructure
from ran_keras.rewrite.linear import FoldError
from ran_keras.spec import BlockSpec, NetworkSpec, prune_hidden, to_codesign


def _gelu(z):
    from math import erf
    return z * 0.5 * (1.0 + np.vectorize(erf)(z / np.sqrt(2.0)))


# --- specs and the paper's counts -------------------------------------------------------------------

def test_model_a_costs_what_the_27_5_percent_pruned_net_costs():
    """Sec. 4: 2 * 2.4 w^2 + w^2 = 5.8 w^2 = 2 * 2.9 w^2 MACs per block, 27.5% below ConvNeXt's 8 w^2."""
    prof = {n: profile_spec(ran_keras.get_spec(f"convnext_tiny{n}")) for n in ("", "_pruned27", "_codesign_a",
                                                                               "_codesign_c")}
    assert prof["_codesign_a"].macs == prof["_pruned27"].macs == prof["_codesign_c"].macs
    assert abs(prof["_codesign_a"].params - prof["_pruned27"].params) < 0.001 * prof["_pruned27"].params
    block = [r for r in prof["_codesign_a"].layers if "_stage1_block2_" in r.name]
    assert {r.name.rsplit("_", 2)[-2] + "_" + r.name.rsplit("_", 1)[-1]: r.output_shape[-1]
            for r in block if r.mac_kind == "conv"} == {"block2_expand": 230, "block2_project": 96, "block2_lower": 96}


def test_codesign_spec_round_trips_and_keeps_other_blocks():
    base = convnext_spec("cx", [8, 16], [1, 2])
    spec = to_codesign(base, 0.25, "exp", lower="expanded")
    assert [b.kind for b in spec.blocks()].count("convnext_codesign") == 3
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert {b.psi for b in spec.blocks() if b.has("psi")} == {"exp"}
    assert prune_hidden(base, 0.5).stages[1][1].expansion == 2


def test_ran_i_scaling_keeps_the_codesign_blocks():
    from ran_keras.spec import scale_width_depth, stage_depths
    spec = scale_width_depth(ran_keras.get_spec("convnext_tiny_codesign_c"), 0.666, 1.65)
    assert stage_depths(spec) == (5, 5, 15, 5)
    assert {(b.psi, b.linear_fraction) for b in spec.blocks() if b.kind == "convnext_codesign"} == {("exp", 0.4)}
    assert profile_spec(spec).macs < profile_spec(ran_keras.get_spec("ran_i_tiny")).macs


def test_codesign_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="linear_fraction.*must be in \\(0, 1\\)"):
        BlockSpec("convnext_codesign", channels=8, linear_fraction=1.0)
    with pytest.raises(SpecError, match="psi.*unknown activation 'tanhh'"):
        BlockSpec("convnext_codesign", channels=8, psi="tanhh")
    with pytest.raises(SpecError, match="lower.*'folded', 'expanded'"):
        BlockSpec("convnext_codesign", channels=8, lower="both")
    with pytest.raises(SpecError, match="stages\\[0\\]\\[0\\].*leaves 2 with activation and 0 linear"):
        NetworkSpec(name="t", stem=(BlockSpec("conv", channels=2, kernel=1),),
                    stages=((BlockSpec("convnext_codesign", channels=2, expansion=1, linear_fraction=0.1),),))
    with pytest.raises(SpecError, match="needs 'convnext' blocks"):
        to_codesign(ran_keras.get_spec("ran_e_a"))


def test_nn_mass_reads_both_branches():
    a, t, p40, c = (nn_mass(ran_keras.get_spec(f"convnext_tiny{n}")) for n in ("_codesign_a", "", "_pruned40",
                                                                               "_codesign_c"))
    block = a.blocks[1]
    assert block.kind == "convnext_codesign" and block.widths == p40.blocks[1].widths == (96, 96, 230, 96)
    assert block.inputs == p40.blocks[1].inputs + 96                 # the lower 1x1's input joins i_b
    assert a.nonlinear_units < c.nonlinear_units < t.nonlinear_units


# --- psi ----------------------------------------------------------------------------------------------

def test_bounded_exp_cannot_overflow_and_is_exp_near_zero(keras):
    from ran_keras.layers import BoundedExp
    layer = BoundedExp(4.0)
    x = np.array([-np.inf, -1e30, -3.0, -0.01, 0.0, 0.01, 3.0, 100.0, 1e30, np.inf], np.float32)
    y = np.asarray(layer(x))
    assert np.all(np.isfinite(y)) and y.min() >= np.exp(-4.0) * 0.999 and y.max() <= np.exp(4.0) * 1.001
    assert np.allclose(y[3:6], np.exp(x[3:6]), rtol=1e-5)
    with np.errstate(over="ignore"):
        assert np.exp(np.float32(100.0)) == np.inf              # what the paper's exp does there
    with pytest.raises(ValueError, match="limit must be"):
        BoundedExp(0.0)
    assert ran_keras.activations.canonical("bexp") == "bounded_exp"


# --- exact restructuring: the math ---------------------------------------------------------------------

@pytest.mark.parametrize("c,h,n", [(13, 39, 16), (8, 32, 13), (5, 7, 1)])
def test_masked_mlp_splits_and_folds_exactly(rng, c, h, n):
    w1, b1 = rng.normal(size=(c, h)), rng.normal(size=h)
    w2, b2 = rng.normal(size=(h, c)), rng.normal(size=c)
    x = rng.normal(size=(50, c)) * 3
    linear = np.sort(rng.choice(h, n, replace=False))
    ref = codesign.masked_mlp(x, w1, b1, w2, b2, linear, _gelu)
    (u1, ub, u2), lower = codesign.split_hidden(w1, b1, w2, linear)
    fw, fb = codesign.fold_lower(*lower)
    assert fw.shape == (c, c) and u1.shape == (c, h - n)
    out = _gelu(x @ u1 + ub) @ u2 + b2 + x @ fw + fb
    assert np.max(np.abs(out - ref)) <= 1e-12 * np.max(np.abs(ref))


def test_channel_choice():
    assert codesign.choose_linear(10, 4, "last").tolist() == [6, 7, 8, 9]
    scores = np.array([5, 0.1, 3, 0.2, 9, 0.3, 7, 8, 1, 2], float)
    assert codesign.choose_linear(10, 3, "linearity", scores).tolist() == [1, 3, 5]
    assert np.allclose(codesign.linearity_scores([1, 2], [[1, 1], [0, 3]]), [2, 18])
    with pytest.raises(FoldError, match="needs one score per hidden channel"):
        codesign.choose_linear(10, 3, "linearity")
    with pytest.raises(FoldError, match="criterion must be one of 'last', 'linearity'"):
        codesign.choose_linear(10, 3, "random")
    with pytest.raises(FoldError, match="between 1 and 9"):
        codesign.choose_linear(10, 10)


# --- exact restructuring: on Keras models ---------------------------------------------------------------

def _randomise(model, rng):
    """Random weights everywhere, layer scale and LayerNorm included (not ConvNeXt's near-zero init)."""
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])


def test_convnext_linearised_by_data_then_folded_equals_the_masked_block(keras, rng):
    spec = convnext_spec("cx", [13], [1], kernel=3, expansion=3).replace(classifier_norm=None)
    model = ran_keras.create_model(spec, (23, 23, 3), include_top=False, seed=0)
    _randomise(model, rng)
    calib = [rng.normal(size=(2, 23, 23, 3)).astype("float32")]
    lin, lin_spec, rep = restructure.linearise(model, spec, 0.4, "linearity", calibration=calib)
    linear = rep.blocks[0].linear
    assert rep.blocks[0].hidden == 39 and len(linear) == 16 and linear != list(range(23, 39))

    # the masked block, in float64, from the original model's weights and its LayerNorm output
    x = rng.normal(size=(3, 23, 23, 3)).astype("float32")
    p = "cx_stage1_block1"
    probe = keras.Model(model.input, [model.get_layer("cx_stem_block1_ln").output, model.get_layer(f"{p}_ln").output])
    block_in, ln = (np.asarray(t, np.float64) for t in probe(x))
    w = {n: model.get_layer(f"{p}_{n}").get_weights() for n in ("expand", "project", "layer_scale")}
    mlp = codesign.masked_mlp(ln.reshape(-1, 13), w["expand"][0][0, 0], w["expand"][1], w["project"][0][0, 0],
                              w["project"][1], linear, _gelu)
    ref = block_in + mlp.reshape(block_in.shape) * w["layer_scale"][0]

    folded, fold_spec, frep = restructure.fold_codesign(lin, lin_spec, sample=x)
    assert [b.lower for b in fold_spec.blocks() if b.has("lower")] == ["folded"]
    assert frep.params_after < frep.params_before and frep.macs_after < frep.macs_before
    assert frep.output_change["max_relative"] <= 1e-5
    for m in (lin, folded):
        out = np.asarray(m(x), np.float64)
        assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))
    assert "1 of" not in frep.format() and "16 of 39 hidden channels folded" in frep.format()
    lean, lean_spec, lrep = restructure.fold_codesign(lin, lin_spec, sample=x, absorb_layer_scale=True)
    assert [b.layer_scale for b in lean_spec.blocks() if b.has("lower")] == [None]
    assert lrep.params_after == frep.params_after - 13 and lrep.blocks[0].layer_scale_absorbed
    out = np.asarray(lean(x), np.float64)
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_restructure_refuses_wrong_inputs(keras):
    spec = convnext_spec("cx", [8], [1], kernel=3)
    model = ran_keras.create_model(spec, (8, 8, 3), classes=3, seed=0)
    with pytest.raises(FoldError, match="needs calibration data"):
        restructure.linearise(model, spec, criterion="linearity")
    with pytest.raises(FoldError, match="no 'convnext_codesign' blocks"):
        restructure.fold_codesign(model, spec)
    with pytest.raises(FoldError, match="was not built from spec"):
        restructure.linearise(model, convnext_spec("cx", [8], [2], kernel=3))


# --- the psi study and the trainer's NaN stop --------------------------------------------------------

def test_psi_study_summary_counts_nan_runs():
    from ran_keras.experiments.psi_stability import markdown, summarise
    rows = [{"psi": "exp", "learning_rate": 0.02, "seed": s, "status": st, "step": 9, "accuracy": a, "seconds": 2.0}
            for s, (st, a) in enumerate([("ok", 0.9), ("nan", None), ("ok", 0.7)])]
    (s,) = summarise(rows)
    assert (s["runs"], s["nan_runs"], s["accuracy_min"], s["accuracy_max"]) == (3, 1, 0.7, 0.9)
    assert s["accuracy_mean"] == pytest.approx(0.8) and s["accuracy_std"] == pytest.approx(0.1414, abs=1e-4)
    assert "| exp | 0.02 | 3 | 1 | 80.0 ± 14.1 (70.0-90.0) | 2 |" in markdown([s])


def test_exp_run_that_overflows_is_recorded_not_crashed(tmp_path):
    """An absurd learning rate drives e^x to inf: the trainer's NaN stop ends the run with a report
    (the study's own runs show bounded_exp finishing where EXP does not: WORKSPACE.md)."""
    from ran_keras.experiments.psi_stability import run_one
    logs = []
    row = run_one("exp", 1e4, 0, tmp_path, logs.append, epochs=1, widths=[8], depths=[1], fraction=0.5,
                  steps_per_epoch=6, batch_size=8)
    assert row["status"] == "nan" and 1 <= row["step"] <= 6 and row["accuracy"] is None
    assert row["message"].startswith("non-finite") and not (tmp_path / "exp_lr10000_seed0" / "model.keras").exists()


def test_cli_linearise_fold_and_start_from(tmp_path, keras, rng):
    from ran_keras.cli import main
    from ran_keras.spec import sidecar_path
    from ran_keras.train.transforms import start_from
    spec = convnext_spec("cx", [8], [1], kernel=3)
    model = ran_keras.create_model(spec, (16, 16, 3), classes=3, seed=0)
    _randomise(model, rng)
    model.save(tmp_path / "cx.keras")
    spec.save(sidecar_path(tmp_path / "cx.keras"))
    assert main(["codesign", "linearise", str(tmp_path / "cx.keras"), str(tmp_path / "lin.keras"),
                 "--criterion", "linearity", "--samples", "2"]) == 0
    assert main(["codesign", "fold", str(tmp_path / "lin.keras"), str(tmp_path / "f.keras"), "--json",
                 str(tmp_path / "f.json")]) == 0
    import json
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["output_change"]["max_relative"] <= 1e-5 and report["blocks"][0]["linear_count"] == 13
    lin_spec = NetworkSpec.load(sidecar_path(tmp_path / "lin.keras"))
    fresh = start_from(tmp_path / "lin.keras").apply(ran_keras.create_model(lin_spec, (16, 16, 3), classes=3))
    saved = ran_keras.builder.load_model(tmp_path / "lin.keras")
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), saved.get_weights()))
    assert main(["codesign", "fold", str(tmp_path / "cx.keras"), str(tmp_path / "g.keras")]) == 2


@pytest.mark.slow
def test_bounded_exp_exports_to_integer_tanh_and_exp():
    """The stable psi is all-integer in TFLite (TANH, EXP), so Ethos-U can run it (WORKSPACE.md)."""
    from ran_keras.experiments.psi_stability import study_spec
    from ran_keras.export.pipeline import export_model
    rep = export_model(study_spec("bounded_exp", [8], [1], 0.5), input_size=32, classes=4, samples=2,
                       calibration="random").report
    assert rep["integer_only"] and rep["tflite"]["ops"]["TANH"] == 1 and rep["tflite"]["ops"]["EXP"] == 1
    assert rep["agreement"]["top1_agreement"] >= 0.5
