"""Offline detection samples: the NEON tree-crown images that the ``deepforest`` wheel ships.

``deepforest`` is a data-only dependency (the ``[detect-demo]`` extra, installed with
``--no-deps``): its folder is found with importlib without importing the package, which would
import torch. Four images have Pascal-VOC XML boxes: OSBS_029 (400 x 400, 61 trees), SOAP_061
(400 x 400, 37 trees labelled Alive / Dead) and two Yellowstone crops (1249 x 1035 with 279
trees; 2299 x 2472 with 574). Imagery CC0 (NEON), package MIT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ran_keras.tasks.detection.errors import DetectionDataError

INSTALL = "pip install --no-deps deepforest==2.1.0"
#: the annotated samples, by file stem (each has <stem>.png and <stem>.xml)
SAMPLES = ("OSBS_029", "SOAP_061", "2019_YELL_2_541000_4977000_image_crop", "2019_YELL_2_528000_4978000_image_crop2")


def data_dir() -> Path:
    """The ``deepforest/data`` folder of the installed wheel (the package is not imported)."""
    spec = importlib.util.find_spec("deepforest")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "data"
        if folder.is_dir():
            return folder
    raise DetectionDataError(f"the deepforest sample data is not installed; install it without its dependencies "
                             f"(it would pull in torch): `{INSTALL}` (`make venv` does)")


def sample_pairs(stems: Optional[Sequence[str]] = None) -> List[Tuple[Path, Path]]:
    """(image .png, annotation .xml) for each sample stem, default all four, in ``SAMPLES`` order."""
    stems = SAMPLES if stems is None else tuple(stems)
    unknown = [s for s in stems if s not in SAMPLES]
    if unknown:
        raise DetectionDataError(f"deepforest samples: unknown {', '.join(map(repr, unknown))}; available: "
                                 f"{', '.join(SAMPLES)}")
    folder = data_dir()
    pairs = [(folder / f"{s}.png", folder / f"{s}.xml") for s in stems]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise DetectionDataError(f"deepforest samples: {', '.join(missing)} missing from the installed package; "
                                 f"reinstall it: `{INSTALL}`")
    return pairs


def source(stems: Optional[Sequence[str]] = None, class_names: Optional[Sequence[str]] = None):
    """The samples as a ``datasets.voc_source`` (classes default to every name found, sorted:
    Alive, Dead, Tree)."""
    from ran_keras.tasks.detection.datasets import voc_source
    return voc_source([xml for _, xml in sample_pairs(stems)], class_names=class_names)
