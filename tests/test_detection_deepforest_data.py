"""The deepforest wheel's samples as offline detection data (found, never imported)."""

import configparser
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from ran_keras.tasks.detection import deepforest_data as D
from ran_keras.tasks.detection.errors import DetectionDataError

ROOT = Path(__file__).resolve().parents[1]
installed = pytest.mark.skipif(importlib.util.find_spec("deepforest") is None,
                               reason=f"deepforest sample data not installed ({D.INSTALL})")


@installed
def test_samples_found_without_importing_deepforest():
    pairs = D.sample_pairs()
    assert [p[0].stem for p in pairs] == list(D.SAMPLES)
    assert all(img.suffix == ".png" and xml.suffix == ".xml" for img, xml in pairs)
    assert "deepforest" not in sys.modules and "torch" not in sys.modules


@installed
def test_samples_read_as_voc():
    source = D.source()
    assert source.class_names == ("Alive", "Dead", "Tree")
    records = list(source.dataset())
    assert [int(r["boxes"].shape[0]) for r in records] == [61, 37, 279, 574]
    assert [r["original_size"].numpy().tolist() for r in records] == [[400, 400], [400, 400], [1035, 1249],
                                                                      [2472, 2299]]
    soap = records[1]["classes"].numpy()
    assert (soap == 1).sum() == 9 and (soap == 2).sum() == 28               # SOAP_061: 9 Alive, 28 Dead
    assert D.source(["OSBS_029"]).num_examples == 1


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DetectionDataError, match=re.escape("pip install --no-deps deepforest==2.1.0")):
        D.data_dir()


def test_unknown_sample_refused():
    with pytest.raises(DetectionDataError, match="unknown 'OSBS_999'"):
        D.sample_pairs(["OSBS_999"])


def test_pins_agree_between_setup_cfg_and_makefile():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extra = cfg["options.extras_require"]["detect-demo"].split()
    makefile = re.search(r"^DATA_ONLY\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert extra == makefile == [D.INSTALL.split()[-1]]
