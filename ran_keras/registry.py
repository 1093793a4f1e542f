"""The model registry: named specs with the paper's figures beside them.

``list_models()``, ``get_spec(name)`` and ``create_model(name_or_spec, ...)`` follow timm and
keras.applications. Registering a model is registering a function that returns its spec.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from ran_keras.errors import SpecError, UnknownModelError
from ran_keras.spec import NetworkSpec

_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}


def parse_count(text: str) -> float:
    """'4.7M' -> 4.7e6, '1.8B' -> 1.8e9 (also G); a bare number is returned as is."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMBG]?)\s*", str(text), flags=re.I)
    if not m:
        raise ValueError(f"cannot read {text!r} as a count like '4.7M' or '1.8B'")
    return float(m.group(1)) * _UNITS.get(m.group(2).upper(), 1.0)


def printed_tolerance(text: str) -> float:
    """Half a unit of the last printed digit of a figure like '1.4B' (0.05e9): its rounding error."""
    m = re.fullmatch(r"\s*[0-9]*(?:\.([0-9]+))?\s*([KMBG]?)\s*", str(text), flags=re.I)
    if not m:
        raise ValueError(f"cannot read {text!r} as a count like '4.7M' or '1.8B'")
    decimals = len(m.group(1) or "")
    return 0.5 * 10.0 ** (-decimals) * _UNITS.get(m.group(2).upper(), 1.0)


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


_REGISTRY: Dict[str, ModelEntry] = {}


def register(name: str, *, family: str, description: str, paper: Optional[PaperFigures] = None):
    """Decorator registering a function that returns the model's NetworkSpec."""

    def wrap(factory: Callable[[], NetworkSpec]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, family, description, factory, paper)
        return factory

    return wrap


@functools.lru_cache(maxsize=None)
def _cached_spec(name: str) -> NetworkSpec:
    spec = _REGISTRY[name].factory()
    if spec.name != name:
        raise RuntimeError(f"registered model {name!r} returned a spec named {spec.name!r}")
    return spec


def _load_builtin() -> None:
    import ran_keras.models  # noqa: F401  (registers the built-in zoo)


def list_models(pattern: Optional[str] = None, family: Optional[str] = None) -> List[str]:
    """Registered model names in registration order, filtered by a shell pattern like 'ran_e_*'."""
    _load_builtin()
    names = [n for n, e in _REGISTRY.items() if family is None or e.family == family]
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_entry(name: str) -> ModelEntry:
    _load_builtin()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownModelError(str(name), _REGISTRY)
    return _REGISTRY[name]


def get_spec(name: str) -> NetworkSpec:
    """The spec of a registered model."""
    return get_entry(name).spec()


def is_registered(name: str) -> bool:
    _load_builtin()
    return name in _REGISTRY


def resolve_spec(model: Union[str, Path, Mapping, NetworkSpec]) -> NetworkSpec:
    """A NetworkSpec from a registered name, a spec JSON path, a dict, or a NetworkSpec."""
    if isinstance(model, NetworkSpec):
        return model
    if isinstance(model, Mapping):
        return NetworkSpec.from_dict(model)
    if isinstance(model, Path) or (isinstance(model, str) and (
            model.endswith(".json") or "/" in model or Path(model).is_file())):
        path = Path(model)
        if not path.is_file():
            raise SpecError("", f"spec file {str(path)!r} does not exist")
        return NetworkSpec.load(path)
    if isinstance(model, str):
        return get_spec(model)
    raise TypeError(f"expected a model name, spec path, dict or NetworkSpec, got {type(model).__name__}")


def create_model(model: Union[str, Path, Mapping, NetworkSpec], input_shape=None, **kwargs):
    """Build a Keras model from a registered name, a spec JSON path/dict, or a NetworkSpec.

    Keyword arguments are those of ``ran_keras.builder.build_model``: ``classes``,
    ``include_top``, ``classifier_activation``, ``activation``, ``pooling``, ``input_tensor``,
    ``weights``, ``seed``, ``name``.
    """
    spec = resolve_spec(model)
    from ran_keras.builder import build_model
    return build_model(spec, input_shape, **kwargs)


def describe(name: str) -> Dict[str, Any]:
    """A JSON-able summary of a registered model (used by ``ran list --json``)."""
    entry = get_entry(name)
    return {"name": entry.name, "family": entry.family, "description": entry.description,
            "paper": entry.paper.to_dict() if entry.paper else None}
