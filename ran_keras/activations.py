"""Activation names accepted in specs, and their canonical spelling."""

from __future__ import annotations

from ran_keras.errors import SpecError, close_matches

#: canonical activation names, in the order the docs list them
ACTIVATIONS = ("relu", "relu6", "hard_swish", "swish", "gelu", "prelu", "linear")

_ALIASES = {
    "hswish": "hard_swish", "h_swish": "hard_swish", "hard-swish": "hard_swish",
    "hardswish": "hard_swish", "silu": "swish", "identity": "linear", "none": "linear",
}


def canonical(name: str, path: str = "activation") -> str:
    """Return the canonical name of an activation, or raise SpecError naming the accepted ones."""
    if not isinstance(name, str):
        raise SpecError(path, f"must be a string naming an activation, got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise SpecError(path, f"unknown activation {name!r}{close_matches(key, ACTIVATIONS)}; "
                              f"accepted: {', '.join(ACTIVATIONS)}")
    return key


def is_nonlinear(name: str) -> bool:
    return name != "linear"
