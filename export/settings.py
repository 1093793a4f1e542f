"""Settings of ``ran hwtable`` and the export defaults, with no numpy or TensorFlow import, so the
command line can show them in ``--help`` without loading either (``ran list`` stays fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Sequence

#: representative data of int8 exports: the offline photos, this many of them
CALIBRATION_SOURCE = "photos"
CALIBRATION_COUNT = 8
DEFAULT_MODELS = ("efficientnet_lite_b0", "efficientnet_lite_b0_hswish", "ran_e_supernet_ibn", "ran_e_subnet_w",
                  "ran_e_a", "ran_e_b", "ran_e_c", "ran_e_gt", "resnet18", "repvgg_a0")
DEFAULT_TARGETS = ("u55-128", "u65-256", "u65-256-384k")
REFERENCE = "efficientnet_lite_b0"
#: --activation values: each model's own, or one of these everywhere (aliases such as hswish work)
ACTIVATIONS = ("default", "relu6", "hard_swish")


@dataclass
class Settings:
    models: Sequence[str] = DEFAULT_MODELS
    targets: Sequence[str] = DEFAULT_TARGETS
    activation: str = "default"
    input_size: int = 224
    classes: int = 1000
    seed: int = 0
    calibration: str = CALIBRATION_SOURCE
    samples: int = CALIBRATION_COUNT
    per_channel: bool = True
    compare: bool = True
    jobs: int = 2
    cache: bool = True
    fail_on_cpu_ops: bool = False

    def __post_init__(self) -> None:
        self.activation = check_activation(self.activation)
        from ran_keras.export.calibration import parse_source
        parse_source(self.calibration)  # a bad source fails before anything is built

    def public(self) -> Dict[str, Any]:
        """What the results depend on (not how they were scheduled)."""
        out = asdict(self)
        for key in ("jobs", "cache", "fail_on_cpu_ops"):
            out.pop(key)
        out["models"], out["targets"] = list(self.models), list(self.targets)
        return out


def check_activation(name: str) -> str:
    """'default', 'relu6' or 'hard_swish' (aliases canonicalised); anything else is an error."""
    from ran_keras.errors import SpecError
    from ran_keras.export.errors import ExportError
    from ran_keras.export.pipeline import canonical_activation
    try:
        act = canonical_activation(name) or "default"
    except SpecError:
        act = None
    if act not in ACTIVATIONS:
        raise ExportError(f"hwtable activation must be one of {', '.join(ACTIVATIONS)} (default: each model's "
                          f"own; aliases such as hswish are accepted), got {name!r}")
    return act
