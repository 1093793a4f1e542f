"""The RAN-i scaling sweep: parsing, analytic costs vs the profiler and Keras, ranking, outputs, CLI."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import ran_keras
from ran_keras.search import scaling
from ran_keras.cli import main
from ran_keras.models.convnext import convnext_spec
from ran_keras.spec import model_drop_path, scale_width_depth
from ran_keras.analysis.nnmass import nn_mass
from ran_keras.analysis.profiler import profile_model, profile_spec
from ran_keras.search.scaling import (Budget, ConvNeXtFamily, ScaleError, make_budgets, paper_budgets, parse_count,
                             parse_counts, parse_grid, parse_range, parse_tolerance, run_sweep, sample_multipliers)

BASE = "convnext_tiny"


@pytest.fixture(scope="module")
def base():
    return ran_keras.get_spec(BASE)


@pytest.fixture(scope="module")
def paper_sweep(base):
    return run_sweep(base, paper_budgets(), grid=(0.005, 0.02))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- parsing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("3.3e9", 3.3e9), ("3.3B", 3.3e9), ("3.3G", 3.3e9), ("3300M", 3.3e9),
                                         ("21M", 21e6), ("21e6", 21e6), (" 21 m ", 21e6), ("1.5k", 1500.0),
                                         ("4500000000", 4.5e9)])
def test_parse_count(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("text, words", [
    ("-3.3e9", "must be a positive count, got '-3.3e9'"),
    ("0", "must be a positive count"),
    ("3.3X", "unknown unit 'X' in '3.3X'; accepted: K, M, B"),
    ("3.3 bytes", "unknown unit 'bytes'"),
    ("lots", "cannot read 'lots' as a count"),
    ("", "cannot read '' as a count"),
])
def test_parse_count_errors(text, words):
    with pytest.raises(ScaleError) as err:
        parse_count(text, "--macs")
    assert str(err.value).startswith("--macs: ") and words in str(err.value)


def test_parse_lists_ranges_tolerance_and_grid():
    assert parse_counts("3.3B,4.5B,8.5B") == pytest.approx([3.3e9, 4.5e9, 8.5e9])
    with pytest.raises(ScaleError, match="empty"):
        parse_counts(" , ")
    assert parse_tolerance("2%") == pytest.approx(0.02) and parse_tolerance("0.05") == 0.05
    with pytest.raises(ScaleError, match="did you mean 2%"):
        parse_tolerance("2")
    with pytest.raises(ScaleError, match="percentage in"):
        parse_tolerance("150%")
    assert parse_range("0.25:1.6", "--wm") == (0.25, 1.6) and parse_range("1:1", "--dm") == (1.0, 1.0)
    with pytest.raises(ScaleError, match=r"--wm: empty range '1.6:0.25'; LO must not exceed HI"):
        parse_range("1.6:0.25", "--wm")
    with pytest.raises(ScaleError, match="must be LO:HI"):
        parse_range("0.5", "--dm")
    with pytest.raises(ScaleError, match="must be positive"):
        parse_range("0:2", "--dm")
    assert parse_grid("0.01") == (0.01, 0.01) and parse_grid("0.01,0.05") == (0.01, 0.05)
    with pytest.raises(ScaleError, match="positive steps"):
        parse_grid("0")


def test_budgets_pair_in_order_and_broadcast():
    h = make_budgets([3.3e9, 4.5e9], [21e6, 28e6], 0.02)
    assert [(b.name, b.macs, b.params) for b in h] == [("H1", 3.3e9, 21e6), ("H2", 4.5e9, 28e6)]
    assert [b.params for b in make_budgets([3e9, 4e9], [20e6])] == [20e6, 20e6]
    assert [b.params for b in make_budgets([3e9], None)] == [None]
    with pytest.raises(ScaleError, match="give one value per budget"):
        make_budgets([1e9, 2e9], [1e6, 2e6, 3e6])
    with pytest.raises(ScaleError, match="at least one budget"):
        make_budgets(None, None)
    with pytest.raises(ScaleError, match="must be positive"):
        Budget("H", -1.0, None)
    b = Budget("H", 100.0, 10.0, 0.1)
    assert b.contains(np.array([90, 111, 100]), np.array([10, 10, 12])).tolist() == [True, False, False]
    assert [b.name for b in paper_budgets()] == ["H1", "H2", "H3"]


# --- analytic costs ----------------------------------------------------------------------------

def test_analytic_costs_equal_the_profiler_and_nn_mass_on_samples(base):
    family = ConvNeXtFamily.from_spec(base)
    wm, dm = sample_multipliers((0.25, 1.6), (0.6, 2.56), samples=25, seed=7)
    wm = np.concatenate([wm, [0.666, 0.789, 0.9105, 1.0]])
    dm = np.concatenate([dm, [1.65, 1.65, 2.30, 1.0]])
    cand = family.evaluate(wm, dm)
    for i in range(len(wm)):
        spec = scale_width_depth(base, float(wm[i]), float(dm[i]), name="sample")
        prof, mass = profile_spec(spec), nn_mass(spec)
        assert [s[-1].channels for s in spec.stages] == cand.widths[i].tolist()
        assert (prof.params, prof.macs) == (cand.params[i], cand.macs[i])
        assert (mass.mass, mass.nonlinear_units) == (cand.nn_mass[i], cand.nonlinear_units[i])
    for name in ("ran_i_tiny", "ran_i_small", "ran_i_base"):
        assert profile_spec(ran_keras.get_spec(name)).params in cand.params.tolist()


@pytest.mark.parametrize("name", ["convnext_small", "convnext_base", "ran_i_base"])
def test_analytic_costs_of_other_bases_at_other_sizes(name):
    spec = ran_keras.get_spec(name)
    point = ConvNeXtFamily.from_spec(spec).evaluate([1.0], [1.0], input_size=96, classes=10)
    prof = profile_spec(spec, input_size=96, classes=10)
    assert (point.params[0], point.macs[0], point.nn_mass[0]) == (prof.params, prof.macs, nn_mass(spec).mass)


def test_analytic_costs_equal_the_built_keras_model(base):
    family = ConvNeXtFamily.from_spec(base)
    cand = family.evaluate([0.3, 0.41], [0.7, 0.9], input_size=64, classes=10)
    for i, (wm, dm) in enumerate(((0.3, 0.7), (0.41, 0.9))):
        model = ran_keras.create_model(scale_width_depth(base, wm, dm, name=f"built{i}"), input_shape=(64, 64, 3),
                                       classes=10)
        built = profile_model(model)
        assert (built.params, built.macs) == (cand.params[i], cand.macs[i]) == (model.count_params(), built.macs)


def test_a_hundred_thousand_candidates_in_one_vectorised_call(base):
    wm, dm = sample_multipliers((0.25, 1.6), (0.6, 2.56), samples=100_000, seed=0)
    cand = ConvNeXtFamily.from_spec(base).evaluate(wm, dm)
    assert len(cand) == 100_000 and cand.widths.shape == (100_000, 4)
    assert cand.macs.dtype == np.int64 and cand.macs.min() > 0 and cand.nn_mass.min() > 0


def test_any_family_of_stages_is_costed_by_the_profiler_rules():
    """Stages of an entry block and a run of identical blocks, any kind (a ResNet here), cost exactly as profiled."""
    spec = ran_keras.get_spec("resnet18")
    cand = ConvNeXtFamily.from_spec(spec).evaluate([1.0, 0.5], [1.0, 1.5], input_size=64, classes=10)
    for i, (wm, dm) in enumerate(((1.0, 1.0), (0.5, 1.5))):
        prof = profile_spec(scale_width_depth(spec, wm, dm), input_size=64, classes=10)
        assert (prof.params, prof.macs) == (cand.params[i], cand.macs[i])


def test_a_run_that_changes_resolution_is_refused_with_the_reason():
    with pytest.raises(ScaleError, match=r"stages\[0\]\[0\]: a 'ibn' block that changes its input's shape cannot be"):
        run_sweep(ran_keras.get_spec("efficientnet_lite_b0"), paper_budgets())


# --- the sweep ---------------------------------------------------------------------------------

def test_sweep_is_deterministic_with_a_seed(base):
    budgets = make_budgets([3.3e9], [21e6], 0.05)
    a = run_sweep(base, budgets, samples=300, seed=3)
    b = run_sweep(base, budgets, samples=300, seed=3)
    c = run_sweep(base, budgets, samples=300, seed=4)
    assert np.array_equal(a.candidates.wm, b.candidates.wm) and a.budgets[0].ranked == b.budgets[0].ranked
    assert json.dumps(dict(a.to_dict(), evaluate_seconds=0)) == json.dumps(dict(b.to_dict(), evaluate_seconds=0))
    assert not np.array_equal(a.candidates.wm, c.candidates.wm)
    w, d = sample_multipliers((0.5, 1.0), (1.0, 2.0), grid=(0.1, 0.5))
    assert sorted(set(np.round(w, 6))) == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0] and sorted(set(d)) == [1.0, 1.5, 2.0]
    assert len(w) == 18


def test_ranking_is_by_nn_mass_inside_the_budget(paper_sweep):
    cand = paper_sweep.candidates
    for result in paper_sweep.budgets[:2]:
        inside = np.flatnonzero(result.budget.contains(cand.macs, cand.params))
        assert result.inside == len(inside) > 0
        assert cand.nn_mass[result.chosen] == cand.nn_mass[inside].max()
        masses = [cand.nn_mass[i] for i in result.ranked]
        assert masses == sorted(masses, reverse=True)
        archs = {(tuple(cand.widths[i]), tuple(cand.depths[i])) for i in result.ranked}
        assert len(archs) == len(result.ranked)


def test_unconstrained_nn_mass_pushes_depth_to_the_top_of_its_range(paper_sweep):
    """Both budgets grow like dm * wm^2 and NN-Mass like dm * wm: the deepest candidates win."""
    cand = paper_sweep.candidates
    deepest = cand.depths.max(axis=0).tolist()
    for result in paper_sweep.budgets[:2]:
        assert cand.depths[result.chosen].tolist() == deepest == [8, 8, 23, 8]   # dm 2.56 rounds to these
        assert cand.dm[result.chosen] >= 2.4


def test_min_width_constraint(base, paper_sweep):
    constrained = run_sweep(base, paper_budgets(min_width=64), grid=(0.005, 0.02))
    for free, kept in zip(paper_sweep.budgets, constrained.budgets):
        assert kept.inside <= free.inside
        assert all(constrained.candidates.widths[i].min() >= 64 for i in kept.ranked)
    chosen = constrained.candidates.row(constrained.budgets[0].chosen)
    free = paper_sweep.candidates.row(paper_sweep.budgets[0].chosen)
    assert min(chosen["widths"]) >= 64 > min(free["widths"]) and chosen["dm"] < free["dm"]
    with pytest.raises(ScaleError, match="min_width must be a positive number of channels"):
        paper_budgets(min_width=0)


def test_min_width_per_budget(base):
    floors = [64, 76, 87]   # the narrowest stage of each of the paper's picks
    result = run_sweep(base, paper_budgets(0.06, min_width=floors), grid=(0.005, 0.02))
    assert [b.budget.min_width for b in result.budgets] == floors
    for b, floor in zip(result.budgets, floors):
        assert b.ranked and all(result.candidates.widths[i].min() >= floor for i in b.ranked)
        assert "narrowest stage >= %d" % floor in b.budget.describe()
    with pytest.raises(ScaleError, match="--min-width has 2 values for 3 budgets"):
        paper_budgets(min_width=[64, 76])
    assert scaling.parse_widths("64,76,87") == floors
    with pytest.raises(ScaleError, match="channel counts must be positive"):
        scaling.parse_widths("64,0")


def test_budget_nothing_fits_says_why(base):
    result = run_sweep(base, make_budgets([1e6], None), samples=50, seed=0)
    assert result.budgets[0].chosen is None
    c = result.candidates
    reach = (f"the 50 candidates reach MACs {scaling.fmt_count(c.macs.min())}-{scaling.fmt_count(c.macs.max())} and "
             f"params {scaling.fmt_count(c.params.min())}-{scaling.fmt_count(c.params.max())}")
    assert (f"H1: MACs 1.00M ±2%: 0 of 50 candidates inside, 0 distinct architectures - none to rank: {reach}; "
            "MACs 1.00M ±2% (980.00K-1.02M) is below all of them: change the target, or move the --wm/--dm ranges "
            "(or --base) so that candidates reach it") in scaling.format_report(result)


def test_nothing_fits_because_of_the_width_floor(base):
    result = run_sweep(base, paper_budgets(min_width=[500, 76, 87]), grid=(0.01, 0.02))
    c, h1 = result.candidates, result.budgets[0]
    fit = h1.budget.contains(c.macs, c.params)
    widest = c.widths.min(axis=1)[fit].max()
    assert h1.chosen is None and fit.sum() > 0 and 50 < widest < 500
    message = scaling.format_report(result).split("\n\nH1: ")[1].split("\n")[0]
    assert message.endswith(f"{fit.sum()} meet the targets but the width floor removed all of them: their narrowest "
                            f"stage has at most {widest} channels, the floor is 500: lower --min-width to at most "
                            f"{widest}")
    assert "--grid" not in message and "sample" not in message
    assert "lower --min_width to at most" in scaling.format_report(result, sep="_")


def test_nothing_fits_when_the_two_targets_disagree_or_samples_are_sparse(base):
    result = run_sweep(base, paper_budgets(), samples=800, seed=0)      # H3 at ±2%: WORKSPACE.md
    message = scaling.nothing_fits(result, result.budgets[2])
    assert "12 meet the MACs target and 15 the params target, none both: widen --tolerance, or give only one" in message
    sparse = run_sweep(base, make_budgets([4e9], None, 0.001), samples=20, seed=0)
    assert scaling.nothing_fits(sparse, sparse.budgets[0]).endswith(
        "0 meet the MACs target: sample more (--samples), use a --grid, or widen --tolerance")
    grid = run_sweep(base, make_budgets([4e9], None, 0.001), grid=(0.5, 0.5))
    assert scaling.nothing_fits(grid, grid.budgets[0]).endswith(
        "0 meet the MACs target: use a finer --grid step or widen --tolerance")


def test_a_non_uniform_stage_names_the_block_that_differs(base):
    stages = list(base.stages)
    stages[2] = stages[2][:2] + (stages[2][2].replace(kernel=3),) + stages[2][3:]
    with pytest.raises(ScaleError) as err:
        ConvNeXtFamily.from_spec(base.replace(stages=tuple(stages)))
    assert ("--base convnext_tiny: stages[2][2]: this 'convnext' block has kernel 3 where stages[2][9] has kernel 7; "
            "a stage's 'convnext' blocks must be identical (drop_path aside)") in str(err.value)
    stages = list(base.stages)
    stages[1] = (stages[1][0], stages[1][0]) + stages[1][1:]
    with pytest.raises(ScaleError, match=r"stages\[1\]\[1\]: is a 'convnext_down' block; a stage may start with one"):
        ConvNeXtFamily.from_spec(base.replace(stages=tuple(stages)))


def test_seed_and_sweep_size_limits():
    with pytest.raises(ScaleError, match="--seed must be an integer >= 0, got -1"):
        sample_multipliers((0.5, 1.0), (1.0, 2.0), samples=10, seed=-1)
    with pytest.raises(ScaleError, match="--samples 5,000,001 is more than the 5,000,000 candidates"):
        sample_multipliers((0.5, 1.0), (1.0, 2.0), samples=scaling.MAX_CANDIDATES + 1)
    with pytest.raises(ScaleError, match=r"makes 264,633,101 candidates \(13,501 x 19,601\), more than the 5,000,000"):
        sample_multipliers(scaling.PAPER_WM, scaling.PAPER_DM, grid=(0.0001, 0.0001))
    assert len(sample_multipliers(scaling.PAPER_WM, scaling.PAPER_DM, grid=(0.005, 0.01))[0]) == 271 * 197
    assert scaling.sweep_options() == {"wm": scaling.PAPER_WM, "dm": scaling.PAPER_DM, "samples": 800, "seed": 0,
                                     "grid": None}
    with pytest.raises(ScaleError, match="--samples and --grid exclude each other"):
        scaling.sweep_options(samples=10, grid=(0.1, 0.1))
    with pytest.raises(ScaleError, match="--seed applies to --samples"):
        scaling.sweep_options(seed=1, grid=(0.1, 0.1))


def test_plot_labels_the_input_size(base, tmp_path, monkeypatch):
    import matplotlib.figure
    labels = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: labels.append(
        fig.axes[0].get_xlabel()))
    result = run_sweep(base, make_budgets([1e9], None, 0.2), samples=20, input_size=160)
    scaling.plot_sweep(result, tmp_path / "p.png")
    assert labels == ["MACs (billions, 160x160)"]


def test_chosen_spec_is_written_and_accepted_by_ran_profile(base, tmp_path, capsys):
    result = run_sweep(base, make_budgets([3.3e9], [21e6], 0.03), samples=800, seed=0)
    written = scaling.write_outputs(result, spec_dir=tmp_path / "specs", csv_path=tmp_path / "c.csv")
    path = written["specs"]["H1"]
    spec = ran_keras.NetworkSpec.load(path)
    row = result.candidates.row(result.budgets[0].chosen)
    assert spec.name == "convnext_tiny_scaled_h1" and spec.family == "ran_i"
    assert model_drop_path(spec) == pytest.approx(model_drop_path(base))
    code, out, _ = run(capsys, "profile", path, "--json")
    data = json.loads(out)
    assert code == 0 and (data["params"], data["macs"]) == (row["params"], row["macs"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert len(rows) == 800 and sum(int(r["in_H1"]) for r in rows) == result.budgets[0].inside
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp files left behind


# --- command line ------------------------------------------------------------------------------

def test_cli_text_json_and_plot(capsys, tmp_path):
    code, out, _ = run(capsys, "scale", "--base", BASE, "--macs", "3.3e9", "--params", "21e6",
                       "--tolerance", "2%", "--samples", "800", "--seed", "0")
    assert code == 0 and "H1: MACs 3.30B ±2%, params 21.00M ±2%" in out and "rank" in out and "NN-Mass" in out
    assert "deepest and narrowest" in out
    plot = tmp_path / "sweep.png"
    code, out, err = run(capsys, "scale", "--paper-budgets", "--grid", "0.02,0.05", "--min-width", "64",
                         "--plot", str(plot), "--mark", "ran_i_tiny", "--spec-dir", str(tmp_path), "--json")
    data = json.loads(out)
    assert code == 1 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # exit 1: H3 is not met (below)
    assert "ran scale: error: no candidate meets budget H3 (1 of 3" in err
    assert [b["name"] for b in data["budgets"]] == ["H1", "H2", "H3"]
    assert [b["min_width"] for b in data["budgets"]] == [64] * 3 and data["settings"]["grid"] == [0.02, 0.05]
    assert [len(b["top"]) for b in data["budgets"]] == [5, 5, 0]      # H3's two targets do not fit together at ±2%
    assert all(min(t["widths"]) >= 64 for b in data["budgets"] for t in b["top"])
    assert sorted(data["written"]["specs"]) == ["H1", "H2"] and "wrote" in err


@pytest.mark.parametrize("argv, words", [
    (["--macs", "-3.3e9"], "argument --macs: a budget must be a positive count, got '-3.3e9'"),
    (["--params", "21Q"], "argument --params: unknown unit 'Q' in '21Q'"),
    (["--macs", "3e9", "--wm", "1.6:0.25"], "argument --wm: empty range '1.6:0.25'"),
    (["--macs", "3e9", "--dm", "2"], "argument --dm: must be LO:HI"),
    (["--macs", "3e9", "--tolerance", "5"], "did you mean 5%?"),
    (["--macs", "3e9", "--samples", "10", "--grid", "0.1"], "not allowed with argument"),
    (["--macs", "3e9", "--min-width", "wide"], "argument --min-width: must be a channel count"),
    (["--macs", "3e9", "--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
])
def test_cli_usage_errors(capsys, argv, words):
    with pytest.raises(SystemExit) as exc:
        main(["scale", *argv])
    assert exc.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    ([], "give at least one budget"),
    (["--macs", "1e9,2e9", "--params", "1M,2M,3M"], "give one value per budget"),
    (["--macs", "3e9", "--grid", "0.1", "--seed", "1"], "--seed applies to --samples"),
    (["--macs", "3e9", "--base", "efficientnet_lite_b0"], "cannot be repeated"),
    (["--macs", "3e9", "--base", "convnext_tinyy"], "Did you mean: convnext_tiny"),
    (["--macs", "3e9", "--plot", "x.pdf"], "ending in .png"),
    (["--paper-budgets", "--macs", "3e9"], "give one or the other"),
    (["--paper-budgets", "--min-width", "64,76"], "--min-width has 2 values for 3 budgets"),
    (["--paper-budgets", "--prefix", "9lives"], "--prefix '9lives' does not make a valid spec name"),
    (["--paper-budgets", "--drop-path", "1.5"], "--drop-path must be in [0, 1), got 1.5"),
    (["--paper-budgets", "--grid", "0.0001"], "makes 264,633,101 candidates (13,501 x 19,601), more than the "
                                              "5,000,000 a sweep evaluates at once; use a larger step"),
    (["--paper-budgets", "--samples", "5000001"], "--samples 5,000,001 is more than the 5,000,000 candidates"),
])
def test_cli_errors_are_one_line(capsys, argv, words):
    code, _, err = run(capsys, "scale", *argv)
    assert code == 2 and words in err and err.count("\n") == 1


def test_absl_experiment_writes_every_output(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ran_keras.experiments.scale", f"--out_dir={out}",
                           "--macs=3.3B,4.5B", "--params=21M,28M", "--tolerance=3%", "--samples=800", "--seed=0",
                           "--min_width=48,56"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["candidates"] == 800 and [b["name"] for b in summary["budgets"]] == ["H1", "H2"]
    assert [b["min_width"] for b in summary["budgets"]] == [48, 56]
    assert (out / "candidates.csv").is_file() and (out / "nnmass_vs_macs.png").is_file()
    assert sorted(p.name for p in (out / "specs").iterdir()) == sorted(
        f"convnext_tiny_scaled_{b['name'].lower()}.json" for b in summary["budgets"] if b["top"])
    bad = subprocess.run([sys.executable, "-m", "ran_keras.experiments.scale", f"--out_dir={tmp_path / 'x'}",
                          "--macs=3.3X"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown unit 'X'" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, words", [
    (["--paper_budgets", "--seed=-1"], "--seed must be an integer >= 0, got -1"),
    (["--paper_budgets", "--grid=0.1", "--samples=10"], "--samples and --grid exclude each other"),
    (["--paper_budgets", "--grid=0.1", "--seed=3"], "--seed applies to --samples; a --grid sweep is not random"),
    (["--paper_budgets", "--grid=0.0001"], "makes 264,633,101 candidates"),
    (["--paper_budgets", "--macs=3B"], "--paper_budgets sets --macs and --params itself"),
    (["--paper_budgets", "--min_width=64,76"], "--min_width has 2 values for 3 budgets"),
    (["--paper_budgets", "--top=0"], "--top must be a positive integer, got 0"),
])
def test_absl_experiment_refuses_what_ran_scale_refuses(tmp_path, flags, words):
    out = tmp_path / "x"
    proc = subprocess.run([sys.executable, "-m", "ran_keras.experiments.scale", f"--out_dir={out}", *flags],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("ran_keras.experiments.scale: error: ") and words in proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()


def test_cli_defaults_are_the_library_constants(capsys):
    with pytest.raises(SystemExit):
        main(["scale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default %g:%g, the paper's)" % scaling.PAPER_WM in text
    assert "(default %g:%g, the paper's)" % scaling.PAPER_DM in text
    assert f"(default {scaling.DEFAULT_SAMPLES}, as in the paper; at most {scaling.MAX_CANDIDATES:,})" in text


def test_absl_scale_shares_flags_with_train_in_one_process(tmp_path):
    """train/search and scale define --seed/--classes/--input_size: loading both must work."""
    code = ("import sys; import ran_keras.experiments.flags; from ran_keras.experiments import scale; "
            "sys.argv = ['scale', '--paper_budgets', '--samples=20']; scale.run()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--out_dir is required" in proc.stderr, proc.stderr
    code = code.replace("'--samples=20'", f"'--samples=20', '--out_dir={tmp_path / 'o'}'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    sweep = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert sweep["candidates"] == 20
    unmet = [b["name"] for b in sweep["budgets"] if not b["top"]]  # 20 samples rarely meet all three at 2%
    assert proc.returncode == (1 if unmet else 0), proc.stderr
    assert (f"error: no candidate meets budget {', '.join(unmet)}" in proc.stderr) == bool(unmet)


def test_other_convnext_family_specs_and_a_light_cli(tmp_path):
    """A user ConvNeXt-family spec (3 stages, 5x5 kernels, e = 3, ReLU stem, no layer scale) is costed exactly."""
    spec = convnext_spec("mine", [24, 48, 96], [2, 2, 4], 0.1, kernel=5, expansion=3, layer_scale=None)
    spec = spec.replace(stem=(spec.stem[0].replace(activation="relu"),))
    family = ConvNeXtFamily.from_spec(spec)
    wm, dm = sample_multipliers((0.5, 2.0), (0.5, 2.0), samples=10, seed=1)
    cand = family.evaluate(wm, dm, input_size=128, classes=7)
    for i in range(10):
        scaled = scale_width_depth(spec, float(wm[i]), float(dm[i]))
        prof, mass = profile_spec(scaled, input_size=128, classes=7), nn_mass(scaled)
        assert (prof.params, prof.macs, mass.nonlinear_units) == (cand.params[i], cand.macs[i],
                                                                   cand.nonlinear_units[i])
        assert mass.mass == pytest.approx(cand.nn_mass[i], rel=1e-12)   # (2w + e w) / 3 is not an integer here
    path = spec.save(tmp_path / "mine.json")
    code = ("import sys; from ran_keras.cli import main; "
            f"code = main(['scale', '--base', {str(path)!r}, '--macs', '1e8', '--tolerance', '50%', '--json']); "
            "sys.exit(code or ('numpy' not in sys.modules) or 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["base"] == "mine"
    light = subprocess.run([sys.executable, "-c", "import sys; from ran_keras.cli import scale; import argparse; "
                            "scale.register(argparse.ArgumentParser().add_subparsers()); "
                            "sys.exit('numpy' in sys.modules)"], check=False)
    assert light.returncode == 0   # `ran` start-up does not pay for numpy


def test_width_floors_land_on_table_7(base):
    """WORKSPACE.md's finding: Table 7 is the highest-NN-Mass candidate above its own narrowest width."""
    cases = ((0.02, "ran_i_tiny", 0), (0.06, "ran_i_small", 1), (0.06, "ran_i_base", 2))
    sweeps = {tol: run_sweep(base, paper_budgets(tol, [64, 76, 87]), grid=(0.005, 0.01)) for tol in (0.02, 0.06)}
    for tol, name, k in cases:
        spec = ran_keras.get_spec(name)
        chosen = sweeps[tol].candidates.row(sweeps[tol].budgets[k].chosen)
        assert chosen["depths"] == [sum(b.kind == "convnext" for b in s) for s in spec.stages]
        assert np.allclose(chosen["widths"], [s[-1].channels for s in spec.stages], rtol=0.015, atol=0)
