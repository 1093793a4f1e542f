"""The model registry's store: ``register`` (a decorator on a function returning a spec) and the
paper's figures for each model. Imports no model file; ``ran_keras.models`` imports every family,
and ``ran_keras.registry`` is the public face (``list_models``, ``get_spec``, ``create_model``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from ran_keras.report import parse_count, printed_tolerance
from ran_keras.spec import NetworkSpec


@dataclass(frozen=True)
class PaperFigures:
    """What the paper reports for a model (strings as printed, so their precision is kept)."""
    params: str
    macs: str
    source: str
    top1_100ep: Optional[float] = None     # Table 1 (100 epochs)
    top1_final: Optional[float] = None     # Table 2 (350 epochs; ResNet/RepVGG: 120 epochs, from [15])
    fps_u55: Optional[float] = None        # FPS normalised to EfficientNet-Lite-B0, Ethos-U55 M-class
    fps_u65: Optional[float] = None        # same, Ethos-U65 A-class
    note: str = ""

    @property
    def params_value(self) -> float:
        return parse_count(self.params)

    @property
    def macs_value(self) -> float:
        return parse_count(self.macs)

    def matches(self, which: str, ours: float, rel_tol: float = 0.015) -> bool:
        """Ours agrees with the paper within ``rel_tol`` or the paper's printed rounding."""
        text = getattr(self, which)
        paper = parse_count(text)
        return abs(ours - paper) <= max(rel_tol * paper, printed_tolerance(text))

    def to_dict(self) -> Dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["params_value"], out["macs_value"] = self.params_value, self.macs_value
        return out


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    description: str
    factory: Callable[[], NetworkSpec]
    paper: Optional[PaperFigures] = None

    def spec(self) -> NetworkSpec:
        return _cached_spec(self.name)


MODELS: Dict[str, ModelEntry] = {}


def register(name: str, *, family: str, description: str, paper: Optional[PaperFigures] = None):
    """Decorator registering a function that returns the model's NetworkSpec."""

    def wrap(factory: Callable[[], NetworkSpec]):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelEntry(name, family, description, factory, paper)
        return factory

    return wrap


@functools.lru_cache(maxsize=None)
def _cached_spec(name: str) -> NetworkSpec:
    spec = MODELS[name].factory()
    if spec.name != name:
        raise RuntimeError(f"registered model {name!r} returned a spec named {spec.name!r}")
    return spec
