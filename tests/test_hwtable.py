"""`ran hwtable`: the RAN-e family through export + Vela, the table files, caching and determinism."""

import json

import pytest

import ran_keras
from ran_keras.cli import main
from ran_keras.export import hwtable
from ran_keras.export.errors import CpuOpsError, ExportError

RAN_E = tuple(ran_keras.list_models("ran_e_*"))
TARGETS = ("u55-128", "u65-256")
REQUIRED = ("cycles_total", "inferences_per_second", "fps_normalised", "utilisation", "cpu_ops")


def settings(**kw):
    base = dict(models=RAN_E, targets=TARGETS, input_size=64, samples=2, compare=False, jobs=2)
    base.update(kw)
    return hwtable.Settings(**base)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """The whole RAN-e family at 64x64 on u55-128 and u65-256, converted in 2 worker processes."""
    out = tmp_path_factory.mktemp("hwtable")
    messages = []
    doc = hwtable.run(settings(), out, progress=messages.append)
    return out, doc, messages


def test_ran_e_family_has_no_cpu_ops(family):
    _, doc, _ = family
    assert {m["label"] for m in doc["models"]} == set(RAN_E) | {"efficientnet_lite_b0"}
    for m in doc["models"]:
        for target in TARGETS:
            assert m["targets"][target]["cpu_ops"] == [], (m["label"], target)
            assert m["export"]["integer_only"]


def test_json_has_every_figure_for_every_model_and_target(family):
    out, doc, _ = family
    assert json.loads((out / "hwtable.json").read_text()) == doc
    for m in doc["models"]:
        assert m["params"] > 0 and m["macs"] > 0
        for target in TARGETS:
            entry = m["targets"][target]
            assert all(entry[k] is not None for k in REQUIRED), (m["label"], target)


def test_reference_is_added_and_paper_figures_sit_beside_ours(family):
    _, doc, messages = family
    ref = doc["models"][0]
    assert ref["label"] == doc["reference"] == "efficientnet_lite_b0" and ref["reference"]
    gt = next(m for m in doc["models"] if m["label"] == "ran_e_gt")
    assert gt["paper"]["macs"] == "433M" and gt["paper"]["fps_u65"] == 1.49
    # the paper's MACs/FPS are for 224x224: at 64x64 they are kept in "paper" but not put beside ours
    assert doc["paper_comparable"] is False and gt["targets"]["u55-128"]["paper_fps_normalised"] is None
    assert any("converted ran_e_gt" in msg for msg in messages)
    total = len(TARGETS) * len(doc["models"])
    assert any(f"[{total:>3}/{total}]" in msg for msg in messages)


def test_fps_is_normalised_to_the_reference_on_each_target():
    """Rows with known FPS: the normalised column and the table cells, by literal numbers."""
    from ran_keras.export import vela
    fps = {"efficientnet_lite_b0": {"u55-128": 50.0, "u65-256": 200.0},
           "ran_e_gt": {"u55-128": 60.0, "u65-256": 300.0}}
    rows = {}
    for label, per_target in fps.items():
        rows[label] = hwtable.Row(label, label, "relu6", 1000, 2000, None)
        rows[label].targets = {t: {"inferences_per_second": f, "paper_fps_normalised": None, "utilisation": 0.5,
                                   "cpu_op_count": 0} for t, f in per_target.items()}
    doc = hwtable._document(settings(), rows, [vela.resolve_target(t) for t in TARGETS], "efficientnet_lite_b0", {})
    normalised = {m["label"]: {t: e["fps_normalised"] for t, e in m["targets"].items()} for m in doc["models"]}
    assert normalised == {"efficientnet_lite_b0": {"u55-128": 1.0, "u65-256": 1.0},
                          "ran_e_gt": {"u55-128": 1.2, "u65-256": 1.5}}
    _, table = hwtable.table_rows(doc)
    assert table[1][6:] == ["60.0", "1.20x", "-", "50%", "300.0", "1.50x", "-", "50%", "0/0"]


def test_paper_figures_are_the_registry_s():
    gt = hwtable._paper("ran_e_gt")
    assert gt == ran_keras.registry.get_entry("ran_e_gt").paper.to_dict()
    assert (gt["params"], gt["macs"], gt["fps_u55"], gt["fps_u65"]) == ("4.5M", "433M", 1.16, 1.49)
    assert gt["macs_value"] == 433e6 and hwtable._paper("my_spec.json") is None


def test_activation_is_default_relu6_or_hard_swish():
    assert hwtable.Settings(activation="hswish").activation == "hard_swish"
    assert hwtable.Settings(activation="RELU6").activation == "relu6"
    plan, ref = hwtable._plan(hwtable.Settings(models=("ran_e_gt",), activation="hard-swish"))
    assert [label for label, _, _ in plan] == ["efficientnet_lite_b0_hard_swish", "ran_e_gt_hard_swish"]
    assert ref == "efficientnet_lite_b0_hard_swish"
    assert [label for label, _, _ in hwtable._plan(hwtable.Settings(models=("ran_e_gt",)))[0]] == [
        "efficientnet_lite_b0", "ran_e_gt"]
    for bad in ("gelu", "prelu", "sigmoidish"):
        with pytest.raises(ExportError, match=f"must be one of default, relu6, hard_swish .*got '{bad}'"):
            hwtable.Settings(activation=bad)


def test_cache_key_follows_the_calibration_images(tmp_path):
    """A folder source is keyed by the images it gives, not only by its path."""
    import numpy as np
    from PIL import Image
    folder = tmp_path / "calib"
    folder.mkdir()

    def image(name, value):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(folder / name)
    for name, value in (("a.png", 10), ("b.png", 20), ("c.png", 30)):
        image(name, value)
    s = hwtable.Settings(calibration=f"folder:{folder}", samples=2)
    spec, versions = ran_keras.get_spec("ran_e_gt").to_dict(), {"tensorflow": "x"}
    key = hwtable.cache_key(spec, s, versions)
    image("c.png", 99)                       # not among the 2 images used
    assert hwtable.cache_key(spec, s, versions) == key
    image("b.png", 21)                       # a used image changed
    changed = hwtable.cache_key(spec, s, versions)
    assert changed != key
    image("0.png", 20)                       # a new first image changes which are used
    assert hwtable.cache_key(spec, s, versions) not in (key, changed)
    photos = hwtable.Settings(samples=2)
    assert hwtable.cache_key(spec, photos, versions) == hwtable.cache_key(spec, photos, versions)


def test_paper_columns_at_224(family):
    """The document logic at the paper's setting (reusing the family's Vela entries)."""
    from ran_keras.export import vela
    _, doc, _ = family
    rows = {}
    for m in doc["models"]:
        row = hwtable.Row(m["label"], m["name"], m["activation"], m["params"], m["macs"], m["paper"], m["export"])
        row.targets = {t: dict(e) for t, e in m["targets"].items()}
        rows[m["label"]] = row
    targets = [vela.resolve_target(t) for t in TARGETS]
    doc224 = hwtable._document(hwtable.Settings(models=RAN_E, targets=TARGETS), rows, targets,
                               "efficientnet_lite_b0", doc["software"])
    gt = next(m for m in doc224["models"] if m["label"] == "ran_e_gt")
    assert doc224["paper_comparable"] and gt["targets"]["u55-128"]["paper_fps_normalised"] == 1.16
    assert gt["targets"]["u65-256"]["paper_fps_normalised"] == 1.49
    text = hwtable.render_text(doc224)
    assert "433M" in text and "1.16x" in text and "1.49x" in text
    assert "433M" not in hwtable.render_text(doc)


def test_output_files(family):
    out, doc, _ = family
    md = (out / "hwtable.md").read_text()
    assert "| model" in md and "u55-128 FPS" in md and "paper" in md and "ran_e_gt" in md
    rows = (out / "hwtable.csv").read_text().splitlines()
    assert len(rows) == 1 + len(doc["models"]) * len(TARGETS) and rows[0].startswith("model,activation")
    assert (out / "hwtable.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "vela").iterdir()) == sorted(TARGETS)
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp files left


@pytest.fixture(scope="module")
def rerun(family):
    """ran_e_gt (and the reference) again into the family's folder: both conversions come from the cache."""
    messages = []
    return hwtable.run(settings(models=("ran_e_gt",)), family[0], progress=messages.append), messages


def test_second_run_reuses_conversions_and_gives_the_same_figures(family, rerun):
    _, doc, _ = family
    again, messages = rerun
    assert sum("cached" in msg for msg in messages) == 2 and not any("converted" in msg for msg in messages)
    before = {m["label"]: m for m in doc["models"]}
    assert [m["label"] for m in again["models"]] == ["efficientnet_lite_b0", "ran_e_gt"]
    for m in again["models"]:
        assert m == before[m["label"]]


def test_two_runs_give_identical_json(rerun, tmp_path):
    """A fresh in-process conversion (no cache) reproduces the worker-process run byte for byte."""
    fresh = hwtable.run(settings(models=("ran_e_gt",), jobs=1, cache=False), tmp_path)
    assert json.dumps(hwtable.strip_volatile(fresh)) == json.dumps(hwtable.strip_volatile(rerun[0]))
    assert (tmp_path / "tflite" / "ran_e_gt.tflite").is_file()


def test_cli_hwtable_with_activation(tmp_path, capsys):
    argv = ["hwtable", "--models", "ran_e_gt", "--targets", "u55-128", "--input-size", "32", "--samples", "1",
            "--no-compare", "--jobs", "1", "--activation", "relu6", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "efficientnet_lite_b0_relu6 (ref)" in captured.out and "ran_e_gt_relu6" in captured.out
    assert "u55-128 FPS" in captured.out and "hwtable: done" in captured.err
    assert main(argv + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["activation"] == "relu6" and all(m["activation"] == "relu6" for m in doc["models"])
    ops = next(m for m in doc["models"] if m["label"] == "ran_e_gt_relu6")["export"]["ops"]
    assert "HARD_SWISH" not in ops


#: a spec with a stride-4 depthwise convolution, which Vela 5.2 leaves to the CPU (its LayerNorms
#: would not be: the export runs them on the NPU, see tests/test_layernorm_npu.py)
CPU_OP_SPEC = {"format": "ran-keras-spec", "version": 1, "name": "tiny_cpu", "head": [], "activation": "relu",
               "stem": [{"kind": "conv", "channels": 8, "kernel": 3, "stride": 1}],
               "stages": [[{"kind": "dw", "kernel": 5, "stride": 4}]]}


def test_fail_on_cpu_ops_with_a_real_cpu_operator(family, tmp_path, capsys):
    import shutil
    shutil.copytree(family[0] / "tflite", tmp_path / "tflite")  # the reference comes from the cache
    spec = tmp_path / "tiny_cpu.json"
    spec.write_text(json.dumps(CPU_OP_SPEC))
    argv = ["hwtable", "--models", str(spec), "--targets", "u55-128", "--input-size", "64", "--samples", "2",
            "--no-compare", "--jobs", "1", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "fall back to the CPU" in captured.err and "tiny_cpu" in captured.out
    assert main(argv + ["--fail-on-cpu-ops"]) == 1
    captured = capsys.readouterr()
    assert "u55-128 FPS" in captured.out  # the table is still printed (and written)
    assert ("ran hwtable: error: 1 operator(s) fall back to the CPU: tiny_cpu on u55-128 (1): DepthwiseConv2D"
            in captured.err)
    with pytest.raises(CpuOpsError, match=r"tiny_cpu on u55-128 \(1\)") as err:
        hwtable.run(settings(models=(str(spec),), targets=("u55-128",), jobs=1, fail_on_cpu_ops=True), tmp_path)
    assert [m["label"] for m in err.value.document["models"]] == ["efficientnet_lite_b0", "tiny_cpu"]
    assert json.loads((tmp_path / "hwtable.json").read_text()) == err.value.document


@pytest.mark.parametrize("argv, message", [
    (["hwtable", "--targets", "u55-128,u56"], "unknown target 'u56'"),
    (["hwtable", "--models", "ran_e_gt,nope"], "unknown model 'nope'"),
    (["hwtable", "--activation", "sigmoidish"], "must be one of default, relu6, hard_swish"),
    (["hwtable", "--activation", "gelu"], "(default: each model's own; aliases such as hswish are accepted), "
                                          "got 'gelu'"),
    (["hwtable", "--models", "gt.tflite"], "'gt.tflite' is a TFLite file; `ran hwtable` takes a registered name, "
                                           "a spec .json or a .keras/.h5 model"),
    (["hwtable", "--models", "gt.keras"], "model file 'gt.keras' does not exist"),
    (["hwtable", "--calibration", "webcam"], "unknown calibration source"),
    (["hwtable", "--models", "ran_e_gt,ran_e_gt"], "listed twice"),
])
def test_cli_hwtable_errors(argv, message, capsys, tmp_path):
    assert main(argv + ["--output-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


#: a spec whose input std overflows float32 when the calibration images are normalised
OVERFLOW_SPEC = dict(LAYERNORM_SPEC, name="tiny_overflow", activation="relu", input_std=[1e-38],
                     stem=[{"kind": "conv", "channels": 8, "kernel": 3, "stride": 2}],
                     stages=[[{"kind": "ibn", "channels": 8, "expansion": 2}]])


def test_a_failed_model_is_marked_the_others_finish_and_no_old_table_stays(family, tmp_path, capsys):
    import shutil
    spec = tmp_path / "overflow.json"
    spec.write_text(json.dumps(OVERFLOW_SPEC))
    out = tmp_path / "out"
    shutil.copytree(family[0] / "tflite", out / "tflite")  # the reference comes from the cache
    (out / "hwtable.md").write_text("# an older run's table\n")
    (out / "hwtable.png").write_bytes(b"old")
    argv = ["hwtable", "--models", str(spec), "--targets", "u55-128", "--input-size", "64", "--samples", "2",
            "--no-compare", "--jobs", "1", "--output-dir", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "ran hwtable: error: 1 of 2 measurements failed" in captured.err
    assert "tiny_overflow: export failed: input mean [127.5] / std [1e-38] turn the calibration images into inf" \
        in captured.err
    doc = json.loads((out / "hwtable.json").read_text())
    assert doc["complete"] is False and [f["model"] for f in doc["failures"]] == ["tiny_overflow"]
    ref, bad = doc["models"]
    assert ref["targets"]["u55-128"]["inferences_per_second"] > 0  # the other model was measured
    assert bad["error"].startswith("export failed") and "error" in bad["targets"]["u55-128"]
    assert "older run" not in (out / "hwtable.md").read_text() and "FAILED: tiny_overflow" in captured.out
    assert (out / "hwtable.png").read_bytes() != b"old"
    assert "tiny_overflow" in (out / "hwtable.csv").read_text().splitlines()[2]
