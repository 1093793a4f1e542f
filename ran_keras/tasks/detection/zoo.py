"""The registered detectors (paper Table 3), kept apart from the classification registry.

``list_models()`` drives the classification tests, so detectors live in their own table:
``list_detectors``, ``get_detector`` (a ``DetectorConfig``), ``resolve_detector`` (a name or a
config .json). The four COCO detectors use a representation size of 1024, the setting with
which Table 3's parameter counts come out (the paper's text and the released code say 512); the
tiny pair (ConvNeXt-T / RAN-i-T backbones) uses the same head. No TensorFlow at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from ran_keras.errors import close_matches
from ran_keras.report import parse_count
from ran_keras.tasks.detection.config import DetectorConfig
from ran_keras.tasks.detection.errors import DetectionError

TABLE3_NOTE = ("Table 3 (COCO, torchvision numbering: 91 classes with background). Params reproduce with "
               "representation size 1024; the paper's text (and the released code's default) says 512.")


@dataclass(frozen=True)
class DetectorPaper:
    """What Table 3 reports for a detector (strings as printed)."""
    params: str
    macs: str
    map: float
    fps_gain: Optional[str] = None

    @property
    def params_value(self) -> float:
        return parse_count(self.params)

    @property
    def macs_value(self) -> float:
        return parse_count(self.macs)


@dataclass(frozen=True)
class DetectorEntry:
    config: DetectorConfig
    description: str
    paper: Optional[DetectorPaper] = None


DETECTORS: Dict[str, DetectorEntry] = {}


def register_detector(config: DetectorConfig, description: str, paper: Optional[DetectorPaper] = None) -> None:
    if config.name in DETECTORS:
        raise DetectionError(f"detector {config.name!r} is registered twice")
    DETECTORS[config.name] = DetectorEntry(config, description, paper)


def list_detectors() -> List[str]:
    return list(DETECTORS)


def is_detector(name) -> bool:
    return isinstance(name, str) and name in DETECTORS


def get_entry(name: str) -> DetectorEntry:
    if not is_detector(name):
        raise DetectionError(f"unknown detector {name!r}{close_matches(str(name), DETECTORS)}; registered: "
                             f"{', '.join(DETECTORS)} (or pass a detector config .json)")
    return DETECTORS[name]


def get_detector(name: str) -> DetectorConfig:
    return get_entry(name).config


def resolve_detector(ref: Union[str, Path, DetectorConfig]) -> DetectorConfig:
    """A DetectorConfig from a registered name, a config .json path or a DetectorConfig."""
    if isinstance(ref, DetectorConfig):
        return ref
    if isinstance(ref, Path) or str(ref).endswith(".json"):
        return DetectorConfig.load(ref)
    return get_detector(str(ref))


_BACKBONES = (("convnext_small", "ConvNeXt-S", DetectorPaper("94.9M", "150.6B", 34.4, "1.33x (RAN-i-S over it)")),
              ("ran_i_small", "RAN-i-S", DetectorPaper("63.6M", "82.5B", 34.7)),
              ("convnext_base", "ConvNeXt-B", DetectorPaper("149.9M", "219.4B", 35.0, "1.21x (RAN-i-B over it)")),
              ("ran_i_base", "RAN-i-B", DetectorPaper("93.2M", "123.4B", 34.9)),
              ("convnext_tiny", "ConvNeXt-T", None),
              ("ran_i_tiny", "RAN-i-T", None))

for _backbone, _label, _paper in _BACKBONES:
    register_detector(DetectorConfig(name=f"rcnn_{_backbone}", backbone=_backbone, num_classes=91,
                                     representation_size=1024),
                      f"slim Faster R-CNN on {_label}'s stride-32 map, FC 1024 (Table 3 setting)", _paper)

#: the offline deepforest demo (README / WORKSPACE.md): RAN-i-T at a quarter width, one class (tree),
#: anchors for 10-100 pixel crowns at the images' own scale (400-pixel crops), a narrow head
register_detector(DetectorConfig(name="rcnn_ran_i_tiny_demo", backbone="ran_i_tiny", backbone_width=0.25,
                                 num_classes=2, representation_size=256, anchor_sizes=(16, 32, 64, 128),
                                 rpn_pre_nms_train=600, rpn_post_nms_train=300, rpn_pre_nms_test=300,
                                 rpn_post_nms_test=300, roi_batch_per_image=128, detections_per_image=150,
                                 min_size=416, max_size=416),
                  "deepforest demo: RAN-i-T at width 0.25, FC 256, anchors 16-128, 416-pixel inputs (no padding)")
