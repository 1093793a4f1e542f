"""``DetectorConfig``: every setting of the slim two-stage detector (paper Sec. 3.5, Appendix E).

Pure Python (no TensorFlow), validated on construction, round-trips through JSON. Defaults are
the torchvision values Arm's released detector uses (one stride-32 feature map, no FPN), except
the representation size: the paper's text says two FC layers of 512 and the released code
defaults to 512, but Table 3's parameter counts come out exactly only with 1024, so the
registered COCO detectors use 1024 (``ran_keras.tasks.detection.zoo``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

from ran_keras.tasks.detection.errors import DetectionError

#: Arm's detector: anchor sizes 32-512 and three aspect ratios on the single stride-32 map (15 anchors)
DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class DetectorConfig:
    """A detector: backbone (registered model or spec .json), heads, sampling and inference settings.

    ``num_classes`` counts the background (COCO: 91 as torchvision numbers it, or 81).
    ``backbone_stage`` picks the backbone's feature map (``features_only`` out index, -1 = last);
    ``backbone_width`` scales its block widths (``spec.scale_width``, 'round'; 1 = as registered).
    """

    name: str
    backbone: str
    num_classes: int = 91
    representation_size: int = 1024
    backbone_stage: int = -1
    backbone_width: float = 1.0
    anchor_sizes: Tuple[float, ...] = DEFAULT_SIZES
    aspect_ratios: Tuple[float, ...] = DEFAULT_ASPECT_RATIOS
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_nms: float = 0.7
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    roi_batch_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou: float = 0.5
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    min_size: int = 800
    max_size: int = 1200
    note: str = field(default="", compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        for key in ("name", "backbone"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise DetectionError(f"DetectorConfig.{key}: must be a non-empty string, got {getattr(self, key)!r}")
        for key in ("anchor_sizes", "aspect_ratios"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not value or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in value):
                raise DetectionError(f"DetectorConfig.{key}: must be a non-empty list of positive numbers, "
                                     f"got {value!r}")
            set_(key, tuple(float(v) for v in value))
        _need(self, ("num_classes",), lambda v: v >= 2, "an integer >= 2 (background + at least one class)")
        _need(self, ("representation_size", "rpn_batch_per_image", "rpn_pre_nms_train", "rpn_post_nms_train",
                     "rpn_pre_nms_test", "rpn_post_nms_test", "roi_output_size", "roi_sampling_ratio",
                     "roi_batch_per_image", "detections_per_image", "min_size", "max_size"),
              lambda v: v >= 1, "a positive integer")
        if not isinstance(self.backbone_stage, int) or isinstance(self.backbone_stage, bool):
            raise DetectionError(f"DetectorConfig.backbone_stage: must be a stage index (int, -1 = last), got "
                                 f"{self.backbone_stage!r}")
        for key in ("rpn_fg_iou", "rpn_bg_iou", "rpn_positive_fraction", "roi_positive_fraction", "roi_fg_iou",
                    "roi_bg_iou", "rpn_nms", "nms_threshold", "score_threshold"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise DetectionError(f"DetectorConfig.{key}: must be a number in [0, 1], got {value!r}")
        if self.rpn_bg_iou > self.rpn_fg_iou or self.roi_bg_iou > self.roi_fg_iou:
            raise DetectionError(f"DetectorConfig: background IoU must not exceed foreground IoU (rpn "
                                 f"{self.rpn_bg_iou}/{self.rpn_fg_iou}, roi {self.roi_bg_iou}/{self.roi_fg_iou})")
        if isinstance(self.backbone_width, bool) or not isinstance(self.backbone_width, (int, float)) or \
                not 0 < self.backbone_width <= 4:
            raise DetectionError(f"DetectorConfig.backbone_width: must be a number in (0, 4], got "
                                 f"{self.backbone_width!r}")
        if self.max_size < self.min_size:
            raise DetectionError(f"DetectorConfig: max_size ({self.max_size}) must be >= min_size ({self.min_size})")

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_sizes) * len(self.aspect_ratios)

    def proposals(self, training: bool) -> Tuple[int, int]:
        """(pre-NMS, post-NMS) proposal counts per image."""
        return ((self.rpn_pre_nms_train, self.rpn_post_nms_train) if training
                else (self.rpn_pre_nms_test, self.rpn_post_nms_test))

    def replace(self, **changes: Any) -> "DetectorConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["anchor_sizes"], out["aspect_ratios"] = list(self.anchor_sizes), list(self.aspect_ratios)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DetectorConfig":
        if not isinstance(data, Mapping):
            raise DetectionError(f"DetectorConfig: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DetectionError(f"DetectorConfig: unknown setting(s) {', '.join(unknown)}; accepted: "
                                 f"{', '.join(sorted(known))}")
        return cls(**dict(data))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "DetectorConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DetectionError(f"detector config {str(path)!r}: cannot read it ({err})") from None
        return cls.from_dict(data)


def _need(cfg: DetectorConfig, keys, ok, what: str) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
            raise DetectionError(f"DetectorConfig.{key}: must be {what}, got {value!r}")


def backbone_spec(config: DetectorConfig, spec=None):
    """The backbone's NetworkSpec: ``spec`` if given, else the one ``config.backbone`` names at
    ``config.backbone_width``."""
    from ran_keras.registry import resolve_spec
    if spec is not None:
        return resolve_spec(spec)
    spec = resolve_spec(config.backbone)
    if config.backbone_width != 1.0:
        from ran_keras.spec import scale_width
        spec = scale_width(spec, config.backbone_width, rounding="round",
                           name=f"{spec.name}_w{config.backbone_width:g}")
    return spec


def feature_info(config: DetectorConfig, spec):
    """The FeatureInfo of the stage the detector reads (index, channels, reduction)."""
    (index,) = spec.check_out_indices((config.backbone_stage,))
    return spec.feature_info[index]


def resize_shape(config: DetectorConfig, height: int, width: int, size_divisible: int = 32) -> Tuple[int, int]:
    """The padded input (height, width) an image of (height, width) becomes (resize, then pad to 32)."""
    scale = min(config.min_size / min(height, width), config.max_size / max(height, width))
    h, w = math.floor(height * scale), math.floor(width * scale)
    return (-(-h // size_divisible) * size_divisible, -(-w // size_divisible) * size_divisible)

