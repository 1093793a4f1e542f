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


def write_crops(out_dir, stems: Sequence[str], size: int = 400, stride: int = 200, min_visible: float = 0.5,
                class_name: str = "Tree") -> Path:
    """Cut the samples ``stems`` into ``size`` x ``size`` crops every ``stride`` pixels (images no
    larger than ``size`` are kept whole) and write each as PNG + VOC XML to ``out_dir``, every box
    as one class ``class_name``. A box is kept, clipped to the crop, when at least
    ``min_visible`` of its area lies inside. Returns ``out_dir`` (for ``datasets.voc_source``)."""
    import numpy as np
    from ran_keras.backend import tf
    from ran_keras.tasks.detection.datasets import voc_source
    if size < 32 or stride < 1 or not 0 < min_visible <= 1:
        raise DetectionDataError(f"deepforest crops: need size >= 32, stride >= 1 and min_visible in (0, 1], got "
                                 f"size={size}, stride={stride}, min_visible={min_visible}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        ((image_path, xml),) = sample_pairs([stem])
        image = tf.io.decode_png(tf.io.read_file(str(image_path)), channels=3).numpy()
        boxes = np.concatenate([r["boxes"].numpy() for r in voc_source([xml]).dataset()])
        height, width = image.shape[:2]
        for top in _starts(height, size, stride):
            for left in _starts(width, size, stride):
                crop = image[top:top + size, left:left + size]
                kept = _crop_boxes(boxes, left, top, crop.shape[1], crop.shape[0], min_visible)
                name = f"{stem}_{top}_{left}"
                (out / f"{name}.png").write_bytes(tf.io.encode_png(crop).numpy())
                (out / f"{name}.xml").write_text(_voc_xml(f"{name}.png", kept, class_name), encoding="utf-8")
    return out


def _starts(length: int, size: int, stride: int) -> List[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    return starts if starts[-1] == length - size else starts + [length - size]


def _crop_boxes(boxes, left: int, top: int, width: int, height: int, min_visible: float):
    import numpy as np
    shifted = boxes - np.array([left, top, left, top], np.float32)
    clipped = np.clip(shifted, 0, [width, height, width, height])
    area = lambda b: np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)  # noqa: E731
    keep = area(clipped) >= min_visible * np.maximum(area(shifted), 1e-6)
    return clipped[keep & (area(clipped) > 0)]


def _voc_xml(filename: str, boxes, class_name: str) -> str:
    objects = "".join(f"<object><name>{class_name}</name><bndbox><xmin>{b[0]:.1f}</xmin><ymin>{b[1]:.1f}</ymin>"
                      f"<xmax>{b[2]:.1f}</xmax><ymax>{b[3]:.1f}</ymax></bndbox></object>" for b in boxes)
    return f"<annotation><filename>{filename}</filename>{objects}</annotation>\n"
