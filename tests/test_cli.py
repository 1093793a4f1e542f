"""The `ran` command line: list, profile, spec, and its error messages."""

import json
import subprocess
import sys

import pytest

from ran_keras.cli import main

from conftest import ALL_MODELS


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_text_and_json(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and all(name in out for name in ALL_MODELS)
    code, out, _ = run(capsys, "list", "ran_e_*", "--json")
    names = [m["name"] for m in json.loads(out)["models"]]
    assert code == 0 and names and all(n.startswith("ran_e_") for n in names)


def test_profile_all_shows_ours_beside_the_paper(capsys):
    code, out, _ = run(capsys, "profile")
    assert code == 0
    assert "ran_e_c" in out and "488M" in out and "489.17M" in out and "NO" not in out


def test_profile_json_keys(capsys, tmp_path):
    code, out, _ = run(capsys, "profile", "ran_e_c", "--json")
    data = json.loads(out)
    assert code == 0
    assert {"name", "params", "trainable_params", "macs", "nonlinear_units"} <= set(data)
    assert data["paper"]["params_match"] and data["paper"]["macs_match"]
    dest = tmp_path / "p.json"
    code, _, err = run(capsys, "profile", "ran_e_gt", "--input-size", "64", "--layers", f"--json={dest}")
    data = json.loads(dest.read_text())
    assert code == 0 and data["input_shape"] == [64, 64, 3] and "paper" not in data and data["layers"]


def test_profile_a_spec_file_and_a_saved_model(capsys, tmp_path):
    import ran_keras
    spec_path = ran_keras.get_spec("ran_e_gt").save(tmp_path / "gt.json")
    code, out, _ = run(capsys, "profile", str(spec_path), "--json")
    assert code == 0 and json.loads(out)["name"] == "ran_e_gt"
    model = ran_keras.create_model("ran_e_gt", input_shape=(64, 64, 3), classes=10)
    model.save(tmp_path / "gt.keras")
    code, out, _ = run(capsys, "profile", str(tmp_path / "gt.keras"), "--json")
    data = json.loads(out)
    assert code == 0 and data["source"] == "keras"
    assert data["macs"] == ran_keras.profile("ran_e_gt", (64, 64, 3), classes=10).macs


def test_spec_command_writes_valid_json(capsys, tmp_path):
    dest = tmp_path / "c.json"
    code, _, _ = run(capsys, "spec", "ran_e_c", "-o", str(dest))
    import ran_keras
    assert code == 0 and ran_keras.NetworkSpec.load(dest) == ran_keras.get_spec("ran_e_c")


@pytest.mark.parametrize("argv, words", [
    (["profile", "ran_e_gtt"], "Did you mean: ran_e_gt"),
    (["profile", "missing.json"], "does not exist"),
    (["profile", "nope.keras"], "does not exist"),
    (["list", "zzz*"], "no registered model matches"),
    (["profile", "ran_e_c", "--activation", "tanh"], "unknown activation 'tanh'"),
])
def test_errors_are_one_clear_line(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err


def test_json_flag_refuses_a_model_name_as_file(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--json", "ran_e_c"])
    assert exc.value.code == 2
    assert "ending in .json" in capsys.readouterr().err


def test_console_script_is_installed():
    from pathlib import Path
    script = Path(sys.executable).parent / "ran"
    assert script.exists(), "the `ran` console script is not installed; run `pip install -e .`"
    proc = subprocess.run([str(script), "list", "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["models"]) == len(ALL_MODELS)


def test_list_and_profile_load_neither_numpy_nor_tensorflow():
    """Start-up stays light: the parser of every subcommand is built, yet the analytic commands
    import neither numpy nor TensorFlow (each would add 0.1-3 s to every `ran` call)."""
    code = ("import sys\nfrom ran_keras.cli import main\n"
            "for argv in (['list'], ['profile', 'ran_e_gt']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('numpy', 'tensorflow') if m in sys.modules), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.strip().splitlines()[-1] == "[]"
