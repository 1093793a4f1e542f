"""Settings of ``ran hwtable`` and the export defaults, and the parsers of export options (the
calibration source, the activation override), with no numpy or TensorFlow import, so the command
line can check them and show them in ``--help`` without loading either (``ran list`` stays fast)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence

from ran_keras.export.errors import CalibrationError, ExportError

#: representative data of int8 exports: the offline photos, this many of them
CALIBRATION_SOURCE = "photos"
CALIBRATION_COUNT = 8
DEFAULT_MODELS = ("efficientnet_lite_b0", "efficientnet_lite_b0_hswish", "ran_e_supernet_ibn", "ran_e_subnet_w",
                  "ran_e_a", "ran_e_b", "ran_e_c", "ran_e_gt", "ran_e_hw_u65", "ran_e_hw_u55", "resnet18",
                  "repvgg_a0")
DEFAULT_TARGETS = ("u55-128", "u65-256", "u65-256-384k", "u85-256", "u85-512")
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
    memory_check: bool = True

    def __post_init__(self) -> None:
        self.activation = check_activation(self.activation)
        parse_source(self.calibration)  # a bad source fails before anything is built

    def public(self) -> Dict[str, Any]:
        """What the results depend on (not how they were scheduled)."""
        out = asdict(self)
        for key in ("jobs", "cache", "fail_on_cpu_ops", "memory_check"):
            out.pop(key)
        out["models"], out["targets"] = list(self.models), list(self.targets)
        return out


def check_activation(name: str) -> str:
    """'default', 'relu6' or 'hard_swish' (aliases canonicalised); anything else is an error."""
    from ran_keras.errors import SpecError
    try:
        act = canonical_activation(name) or "default"
    except SpecError:
        act = None
    if act not in ACTIVATIONS:
        raise ExportError(f"hwtable activation must be one of {', '.join(ACTIVATIONS)} (default: each model's "
                          f"own; aliases such as hswish are accepted), got {name!r}")
    return act


def canonical_activation(activation: Optional[str]) -> Optional[str]:
    """None for the model's own activations (None or 'default'), else the canonical name
    ('hswish' -> 'hard_swish'); an unknown name raises SpecError listing the accepted ones."""
    if activation is None or (isinstance(activation, str) and activation.strip().lower() == "default"):
        return None
    from ran_keras.activations import canonical
    return canonical(activation, "--activation")


@dataclass(frozen=True)
class Source:
    kind: str
    path: Optional[str] = None      # folder
    name: Optional[str] = None      # tfds dataset
    split: Optional[str] = None     # tfds split

    def __str__(self) -> str:
        if self.kind == "folder":
            return f"folder:{self.path}"
        if self.kind == "tfds":
            return f"tfds:{self.name}:{self.split}"
        return self.kind


def parse_source(text: str) -> Source:
    """'photos' | 'random' | 'folder:PATH' | an existing directory | 'tfds:NAME[:SPLIT]'."""
    if not isinstance(text, str) or not text.strip():
        raise CalibrationError(f"calibration source must be one of {_accepted_sources()}, got {text!r}")
    text = text.strip()
    kind, _, rest = text.partition(":")
    if text in ("photos", "random"):
        return Source(text)
    if kind == "folder" and rest:
        return Source("folder", path=rest)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return Source("tfds", name=name, split=split or "train")
    if os.path.isdir(text):
        return Source("folder", path=text)
    raise CalibrationError(f"unknown calibration source {text!r}; accepted: {_accepted_sources()}")


def _accepted_sources() -> str:
    return "'photos', 'random', 'folder:PATH' (or a directory), 'tfds:NAME[:SPLIT]'"
