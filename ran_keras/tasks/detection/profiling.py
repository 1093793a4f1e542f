"""Parameters and MACs of a detector, split into backbone / RPN / RoI head (no TensorFlow).

The backbone's rows come from the classification profiler up to the stage the detector reads;
the RPN's are its three convolutions on the stride-32 map; the RoI head's are its four dense
layers, run once per RoI, so its MACs scale with the RoI count. MACs depend on both the
(padded) input size and the RoI count, and both are stated with every figure. Proposal
selection, RoIAlign and NMS are not multiply-accumulates of layers and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ran_keras.analysis.profiler import LayerRow, Profile, block_rows
from ran_keras.ir.costs import dense_params
from ran_keras.tasks.detection.config import DetectorConfig
from ran_keras.tasks.detection.config import backbone_spec, feature_info

PARTS = ("backbone", "rpn", "roi_head")


@dataclass
class DetectorProfile:
    """Per-part profiles at ``image_size`` (padded height, width) with ``rois`` RoIs per image."""
    name: str
    image_size: Tuple[int, int]
    rois: int
    parts: Dict[str, Profile]

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts.values())

    @property
    def macs(self) -> int:
        return sum(p.macs for p in self.parts.values())

    def to_dict(self, layers: bool = False) -> Dict[str, Any]:
        return {"name": self.name, "image_size": list(self.image_size), "rois": self.rois, "params": self.params,
                "macs": self.macs, "parts": {k: p.to_dict(layers) for k, p in self.parts.items()}}


def profile_detector(config: DetectorConfig, image_size: Tuple[int, int] = (800, 800), rois: Optional[int] = None,
                     spec=None) -> DetectorProfile:
    """Profile ``config`` on one padded image of ``image_size`` (height, width) with ``rois`` RoIs
    through the head (default: the test-time proposal count)."""
    spec = backbone_spec(config, spec)
    rois = config.rpn_post_nms_test if rois is None else int(rois)
    height, width = (int(v) for v in image_size)
    shape = spec.check_input_shape((height, width, spec.input_channels))
    info = feature_info(config, spec)
    backbone = Profile(spec.name, shape, None, "spec")
    for site in spec.sites:
        rows, shape = block_rows(spec, site, shape)
        backbone.layers.extend(rows)
        if site.prefix == info.block:
            break
    backbone.layers.append(LayerRow(f"{spec.name}_{info.name}", "Activation", tuple(shape)))
    return DetectorProfile(config.name, (height, width), rois,
                           {"backbone": backbone, "rpn": _rpn(config, shape), "roi_head": _roi_head(config, info.channels,
                                                                                                   rois)})


def _conv(name: str, shape, k: int, cin: int, cout: int, nonlinear: bool) -> LayerRow:
    h, w = shape[0], shape[1]
    params = k * k * cin * cout + cout
    return LayerRow(name, "Conv2D", (h, w, cout), params, params, h * w * k * k * cin * cout, "conv",
                    cout if nonlinear else 0)


def _rpn(config: DetectorConfig, shape) -> Profile:
    c, a, name = shape[2], config.anchors_per_location, config.name
    prof = Profile(f"{name}_rpn", tuple(shape), None, "spec")
    prof.layers = [_conv(f"{name}_rpn_conv", shape, 3, c, c, True),
                   _conv(f"{name}_rpn_objectness", shape, 1, c, a, False),
                   _conv(f"{name}_rpn_box", shape, 1, c, 4 * a, False)]
    return prof


def _roi_head(config: DetectorConfig, channels: int, rois: int) -> Profile:
    s, r, k, name = config.roi_output_size, config.representation_size, config.num_classes, config.name
    flat = s * s * channels
    prof = Profile(f"{name}_roi_head", (s, s, channels), k, "spec")
    prof.layers = [LayerRow(f"{name}_roi_flatten", "Flatten", (flat,))]
    for layer, cin, cout, relu in (("fc6", flat, r, True), ("fc7", r, r, True), ("cls_score", r, k, False),
                                   ("bbox_pred", r, 4 * k, False)):
        p = dense_params(cin, cout)
        prof.layers.append(LayerRow(f"{name}_{layer}", "Dense", (rois, cout), p, p, rois * cin * cout, "dense",
                                    rois * cout if relu else 0))
    return prof
