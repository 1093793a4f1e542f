"""Hardware-aware restructuring (issue 15): the search space, the Vela cost table and model, the
c_i-weighted alpha penalty, the refinement. Vela runs on a tiny SuperNet at 32x32 with a subset of
the choices (12 compiles); the rest uses hand-made tables."""

import itertools
import json
import random

import pytest

from ran_keras import registry
from ran_keras.analysis.profiler import profile_spec
from ran_keras.search import hwcost, hwspace, refine
from ran_keras.search.hwspace import Choice, Design
from ran_keras.spec import BlockSpec, NetworkSpec

REGISTERED = ("ran_e_a", "ran_e_b", "ran_e_c", "ran_e_gt", "ran_e_supernet_ibn")


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_subnetworks_are_designs_of_the_supernet(name):
    supernet, spec = registry.get_spec("ran_e_supernet"), registry.get_spec(name)
    rebuilt = hwspace.design_spec(supernet, hwspace.design_of(supernet, spec), name=name)
    a, b = profile_spec(spec, input_size=224, classes=1000), profile_spec(rebuilt, input_size=224, classes=1000)
    assert (a.params, a.macs, a.nonlinear_units) == (b.params, b.macs, b.nonlinear_units)


def test_design_spec_sets_kernel_and_activation_per_block():
    supernet = registry.get_spec("ran_e_supernet")
    choices = [Choice("collapsed", 7, "relu6")] + [Choice("ibn", 5, "hard_swish")] * 15
    spec = hwspace.design_spec(supernet, Design(tuple(choices), "relu6"), name="d")
    first, second = spec.stages[0][0], spec.stages[1][0]
    assert (first.kind, first.kernel, first.activation) == ("collapsed", 7, "relu6")
    assert (second.kind, second.kernel, second.activation) == ("ibn", 5, "hard_swish")
    assert spec.activation == "relu6" and hwspace.design_of(supernet, spec).choices == tuple(choices)
    with pytest.raises(hwspace.SpaceError, match="16 AFRB sites"):
        hwspace.design_spec(supernet, Design(tuple(choices[:3])))
    with pytest.raises(hwspace.SpaceError, match="not in the space"):
        Choice("collapsed", 9, "relu6")


def test_measurement_designs_observe_every_site_choice_and_context():
    n = 16
    seen = set()
    for _, design in hwspace.measurement_designs(n):
        for i, (c, lut) in enumerate(zip(design.choices, hwspace.contexts(design))):
            seen.add((i, c, lut))
    last = n - 1   # the last site is followed by the head, which never starts with a fused LUT
    want = {(i, c, lut) for i in range(n) for c in hwspace.ALL_CHOICES for lut in (False, True)
            if not (i == last and lut)}
    assert want <= seen and len(hwspace.measurement_designs(n)) == 36


# --- Vela on a tiny SuperNet ----------------------------------------------------------------------

def tiny_supernet():
    return NetworkSpec(
        name="tiny_super", family="ran_e", activation="hard_swish", input_size=32,
        stem=(BlockSpec("conv", channels=8, kernel=3, stride=2, norm=None, bias=False, activation="linear"),),
        stages=((BlockSpec("afrb1", channels=16, kernel=3, stride=2, expansion=4),),
                (BlockSpec("afrb2", channels=16, kernel=3, stride=1, expansion=4),
                 BlockSpec("afrb3", channels=16, kernel=3, stride=1, expansion=4))),
        head=(BlockSpec("conv", channels=32, kernel=1),))


TINY_CHOICES = (Choice("ibn", 3, "relu6"), Choice("collapsed", 3, "relu6"), Choice("collapsed", 5, "hard_swish"))
SETTINGS = hwcost.ExportSettings(input_size=32, classes=10, samples=2)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    pytest.importorskip("ethosu.vela")
    work = tmp_path_factory.mktemp("hw")
    comp = hwcost.Compiler(tiny_supernet(), SETTINGS, work, say=lambda m: None)
    table = hwcost.measure_table(tiny_supernet(), "u65-256", SETTINGS, work, say=lambda m: None, compiler=comp,
                                 choices=TINY_CHOICES)
    return table, comp, work


@pytest.mark.slow
def test_cost_table_attributes_every_cycle_to_a_site(tiny_table):
    table, comp, _ = tiny_table
    assert table.sites == ["stage1_block1", "stage2_block1", "stage2_block2"] and table.missing() == []
    assert len(table.measured) == 9 and table.core_clock > 0 and table.tail > 0
    model = hwcost.CostModel(table)
    # in-sample designs are reproduced (up to the averaging of repeated observations, e.g. the tail)
    for label, design in hwspace.measurement_designs(3, TINY_CHOICES):
        assert model.cycles(design) == pytest.approx(table.measured[label], rel=1e-3)
    # a fused conv named after the next block's leading activation is charged to its owner
    spec = comp.design("probe", Design.uniform(Choice("collapsed", 3, "relu6"), 3))
    rep = comp.compile(spec, "u65-256")
    per_unit = hwcost.attribute(rep.layers, spec)
    assert sum(per_unit.values()) == rep.cycles_total and per_unit["stem"] > 0 and per_unit["head"] > 0


@pytest.mark.slow
def test_cost_table_is_cached_by_key(tiny_table):
    table, _, work = tiny_table

    class NoCompiles:
        def design(self, *a):
            raise AssertionError("a cached table must not compile")

    again = hwcost.measure_table(tiny_supernet(), "u65-256", SETTINGS, work, say=lambda m: None,
                                 compiler=NoCompiles(), choices=TINY_CHOICES)
    assert again.to_dict() == table.to_dict()
    assert hwcost.table_key(tiny_supernet(), _target("u55-128"), SETTINGS, TINY_CHOICES) != table.key
    files = list((work / "tables").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["format"] == hwcost.FORMAT


def _target(name):
    from ran_keras.export.vela import resolve_target
    return resolve_target(name)


@pytest.mark.slow
def test_cost_model_predicts_held_out_designs(tiny_table):
    table, comp, _ = tiny_table
    model = hwcost.CostModel(table)
    rng = random.Random(1)
    held = [(f"r{i}", Design(tuple(rng.choice(TINY_CHOICES) for _ in range(3)), rng.choice(("relu6", "hard_swish"))))
            for i in range(2)]
    checks = hwcost.validate(model, held, comp, "u65-256", say=lambda m: None)
    assert all(abs(c.error) < 0.05 for c in checks), [c.to_dict() for c in checks]
    assert hwcost.pricing_rate(model, [d for _, d in held]) > 1000


# --- the penalty's weights, the penalty -----------------------------------------------------------

def fake_table(n=4, seed=0, choices=hwspace.ALL_CHOICES):
    rng = random.Random(seed)
    entries = {f"s{i}": {c.key: {"plain": rng.uniform(50, 150) * (2 if c.form == "ibn" else 1),
                                 "lut": rng.uniform(150, 250)} for c in choices} for i in range(n)}
    return hwcost.CostTable("fake", "t", 1e6, [f"s{i}" for i in range(n)], entries, {"plain": 10.0, "lut": 20.0},
                            {"relu6": 30.0, "hard_swish": 60.0}, 5.0, choices=[c.key for c in choices])


def test_collapse_weights_are_normalised_savings():
    model = hwcost.CostModel(fake_table())
    savings = hwcost.collapse_savings(model)
    weights = hwcost.collapse_weights(model)
    assert sum(weights) / len(weights) == pytest.approx(1.0)
    assert max(range(4), key=savings.__getitem__) == max(range(4), key=weights.__getitem__)
    table = fake_table()
    table.entries["s0"]["collapsed-k3-hard_swish"]["plain"] = 1e9        # collapsing s0 costs cycles
    assert hwcost.collapse_weights(hwcost.CostModel(table))[0] == 0.0


def test_weighted_alpha_penalty():
    from ran_keras.backend import tf
    from ran_keras.search.prelu import AlphaPenalty, SearchError, alpha_penalty, demo_supernet_spec
    alphas = [tf.Variable(0.5), tf.Variable(0.0)]
    assert float(alpha_penalty(alphas, 0.1)) == pytest.approx(0.1 * (0.25 + 1.0))
    assert float(alpha_penalty(alphas, 0.1, [1.0, 1.0])) == pytest.approx(0.1 * 1.25)
    assert float(alpha_penalty(alphas, 0.1, [2.0, 0.0])) == pytest.approx(0.1 * 0.5)
    spec = demo_supernet_spec()
    assert AlphaPenalty(spec, 0.1).weights == [1.0] * 16
    with pytest.raises(SearchError, match="16 finite numbers"):
        AlphaPenalty(spec, 0.1, [1.0] * 3)
    with pytest.raises(SearchError, match="16 finite numbers"):
        AlphaPenalty(spec, 0.1, [-1.0] * 16)


# --- refinement -----------------------------------------------------------------------------------

def fake_budgets(n, choices, seed=0):
    rng = random.Random(seed)
    macs = [{c: rng.randint(10, 20) * (3 if c.form == "ibn" else 2) * c.kernel for c in choices} for _ in range(n)]
    units = [{c: (rng.randint(40, 60) if c.form == "ibn" else rng.randint(5, 10)) for c in choices} for _ in range(n)]
    return refine.SiteBudgets(100, 50, macs, units)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refinement_finds_the_constrained_optimum(seed):
    choices = (Choice("ibn", 3, "relu6"), Choice("collapsed", 3, "relu6"), Choice("collapsed", 5, "hard_swish"),
               Choice("ibn", 7, "hard_swish"))
    n = 5
    model = hwcost.CostModel(fake_table(n, seed, choices))
    budgets = fake_budgets(n, choices, seed)
    all_designs = [Design(c, h) for c in itertools.product(choices, repeat=n) for h in ("relu6", "hard_swish")]
    totals = {d: budgets.totals(d) for d in all_designs}
    max_macs = sorted(t[0] for t in totals.values())[len(all_designs) // 2]
    min_units = sorted(t[1] for t in totals.values())[len(all_designs) // 3]
    feasible = [d for d in all_designs if totals[d][0] <= max_macs and totals[d][1] >= min_units]
    brute = min(model.cycles(d) for d in feasible)
    res = refine.refine(model, budgets, max_macs=max_macs, min_units=min_units, grid=12)
    assert res.best.cycles == pytest.approx(brute)
    assert res.best.macs <= max_macs and res.best.units >= min_units and res.evaluated > 0


def test_refinement_respects_allowed_and_reports_infeasible():
    choices = (Choice("ibn", 3, "relu6"), Choice("collapsed", 3, "relu6"))
    model = hwcost.CostModel(fake_table(3, 0, choices))
    budgets = fake_budgets(3, choices)
    allowed = [[choices[0]], list(choices), list(choices)]
    res = refine.refine(model, budgets, max_macs=1e9, min_units=0, allowed=allowed)
    assert res.best.design.choices[0] == choices[0]
    with pytest.raises(refine.RefineError, match="no design meets"):
        refine.refine(model, budgets, max_macs=1e9, min_units=1e9)
    assert refine.allowed_from_collapse([True, False])[1] == [c for c in hwspace.ALL_CHOICES if c.form == "ibn"]


def test_site_budgets_are_additive():
    supernet = registry.get_spec("ran_e_supernet")
    budgets = refine.site_budgets(supernet, 224, 1000)
    for name in REGISTERED:
        prof = profile_spec(registry.get_spec(name), input_size=224, classes=1000)
        assert budgets.totals(hwspace.design_of(supernet, registry.get_spec(name))) == (prof.macs,
                                                                                         prof.nonlinear_units)


def test_cli_rejects_a_bad_target_before_work(capsys):
    from ran_keras.cli import main
    assert main(["hwsearch", "--targets", "u65-999", "--output-dir", "/nonexistent/x"]) == 2
    assert "unknown target 'u65-999'" in capsys.readouterr().err


def test_cli_rejects_choices_outside_the_space(capsys):
    from ran_keras.cli import main
    for argv, message in ((["--activations", "gelu"], "a subset of relu6,hard_swish"),
                          (["--kernels", "3,4"], "a subset of 3,5,7"), (["--band", "1"], "2 numbers")):
        with pytest.raises(SystemExit):
            main(["hwsearch"] + argv)
        assert message in capsys.readouterr().err


def test_report_front_and_names():
    from ran_keras.search import hwsearch
    assert hwsearch.found_name("u65-256") == "ran_e_hw_u65" and hwsearch.found_name("u85-256") == "ran_e_hw_u85_256"
    choices = (Choice("ibn", 3, "relu6"), Choice("collapsed", 3, "relu6"))
    front = [refine.Candidate(Design((a, b)), cycles=1e6 / f, fps=f, macs=10, units=u)
             for (a, b), f, u in zip(itertools.product(choices, repeat=2), (10, 20, 15, 30), (40, 30, 35, 10))]
    summary = hwsearch.front_summary(front)
    assert [r["fps"] for r in summary if r["pareto"]] == [10, 15, 20, 30] and len(summary) == 4
    check = hwcost.Check("ran_e_gt", 101.0, 100, 9.9, 10.0).to_dict()
    conf = {n: {"fps": f, "fps_predicted": f, "macs": 4e8, "nonlinear_units": 17000, "cpu_ops": 0}
            for n, f in (("ran_e_hw_u65", 30.0), ("ran_e_gt", 20.0))}
    doc = {"validation": {"u65-256": {"checks": [check], "designs_per_second": 5e4, "max_abs_error": 0.01}},
           "targets": {"u65-256": {"evaluated": 4, "designs_per_second": 100.0, "confirmed": conf}},
           "digits": {"ran_e_gt": 0.975, "ran_e_hw_u65": 0.98}}
    text = hwsearch.format_report(doc)
    assert "+1.0000%" in text and "1.50x" in text and "98.00%" in text and "50,000" in text


def test_pareto_plot_is_written(tmp_path):
    from ran_keras.search import hwsearch
    entry = {"front": [{"fps": 10.0 + i, "macs": 4e8 - i * 1e6, "nonlinear_units": 17000 - 100 * i, "pareto": i < 2}
                       for i in range(5)],
             "confirmed": {n: {"fps": f, "macs": 4e8, "nonlinear_units": 17000} for n, f in
                           (("ran_e_hw_u65", 30.0), ("ran_e_gt", 20.0), ("efficientnet_lite_b0", 18.0))}}
    path = hwsearch.plot_pareto(entry, "u65-256", tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(tmp_path.iterdir()) == [path]


def test_found_specs_name_the_command():
    from ran_keras.search.hwsearch import HwSearchConfig, command_line
    assert command_line(HwSearchConfig()) == "ran hwsearch --targets u65-256,u55-128"
    assert command_line(HwSearchConfig(targets=("u65-256",), activations=("hard_swish",), lam=0.3)) == (
        "ran hwsearch --targets u65-256 --lambda 0.3 --activations hard_swish")
    spec = registry.get_spec("ran_e_hw_u65")
    assert "`ran hwsearch --targets u65-256,u55-128 --activations hard_swish`" in spec.description
