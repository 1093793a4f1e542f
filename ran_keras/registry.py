"""The model registry: named specs with the paper's figures beside them.

``list_models()``, ``get_spec(name)`` and ``create_model(name_or_spec, ...)`` follow timm and
keras.applications. A model is registered in its family's module under ``ran_keras/models/``
(``@register`` from ``ran_keras.models._registry``) and the module is imported by
``ran_keras/models/__init__.py``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import ran_keras.models  # noqa: F401  (registers the built-in zoo)
from ran_keras.errors import SpecError, UnknownModelError
from ran_keras.models._registry import MODELS, ModelEntry, PaperFigures
from ran_keras.spec import NetworkSpec

def list_models(pattern: Optional[str] = None, family: Optional[str] = None) -> List[str]:
    """Registered model names in registration order, filtered by a shell pattern like 'ran_e_*'."""
    names = [n for n, e in MODELS.items() if family is None or e.family == family]
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in MODELS:
        raise UnknownModelError(str(name), MODELS)
    return MODELS[name]


def get_spec(name: str) -> NetworkSpec:
    """The spec of a registered model."""
    return get_entry(name).spec()


def is_registered(name: str) -> bool:
    return name in MODELS


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
