"""The activation registry: every activation a spec may name, in one place.

An entry knows its canonical name and aliases, whether it is non-linear (what the profiler counts
as non-linear units and NN-Mass as activations), its parameters per channel, the Keras layer the
builder makes (imported lazily, so specs stay TensorFlow-free) and the Keras activation-function
names that mean it (so a built model's ``Activation`` layers are recognised). To add an
activation, register it here; specs, the builder, the profiler and NN-Mass pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from ran_keras.errors import SpecError, close_matches


@dataclass(frozen=True)
class Activation:
    name: str
    layer: Callable[[str], Any]            # layer name -> a new Keras layer
    aliases: Tuple[str, ...] = ()
    nonlinear: bool = True
    params_per_channel: int = 0
    keras_names: Tuple[str, ...] = ()      # keras.activations function names that mean this activation
    doc: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


_REGISTRY: Dict[str, Activation] = {}
_ALIASES: Dict[str, str] = {}


def register(act: Activation) -> Activation:
    for key in (act.name, *act.aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"activation name {key!r} registered twice")
    _REGISTRY[act.name] = act
    _ALIASES.update({a: act.name for a in act.aliases})
    return act


def names() -> Tuple[str, ...]:
    """Canonical names, in registration order."""
    return tuple(_REGISTRY)


def canonical(name: str, path: str = "activation") -> str:
    """Return the canonical name of an activation, or raise SpecError naming the accepted ones."""
    if not isinstance(name, str):
        raise SpecError(path, f"must be a string naming an activation, got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise SpecError(path, f"unknown activation {name!r}{close_matches(key, _REGISTRY)}; "
                              f"accepted: {', '.join(_REGISTRY)}")
    return key


def get(name: str) -> Activation:
    return _REGISTRY[canonical(name)]


def is_nonlinear(name: str) -> bool:
    return get(name).nonlinear


def from_keras_name(fn_name: str) -> Optional[Activation]:
    """The entry whose Keras activation-function name is ``fn_name`` ('gelu', 'exponential'), if any."""
    return next((a for a in _REGISTRY.values() if fn_name in a.keras_names), None)


# --- the Keras layers (Keras is imported when a layer is made) ---------------------------------

def _relu(max_value=None):
    def make(name):
        from ran_keras.backend import keras
        return keras.layers.ReLU(max_value, name=name)
    return make


def _keras_activation(fn: str):
    def make(name):
        from ran_keras.backend import keras
        return keras.layers.Activation(fn, name=name)
    return make


def _hard_swish(name):
    from ran_keras.layers import HardSwish
    return HardSwish(name=name)


def _bounded_exp(name):
    from ran_keras.layers import BoundedExp
    return BoundedExp(name=name)


def _prelu(name):
    from ran_keras.backend import keras
    return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name)


register(Activation("relu", _relu(), doc="max(x, 0)"))
register(Activation("relu6", _relu(6.0), doc="min(max(x, 0), 6)"))
register(Activation("hard_swish", _hard_swish, ("hswish", "h_swish", "hard-swish", "hardswish"),
                    doc="x * relu6(x + 3) / 6; one HARD_SWISH op in TFLite"))
register(Activation("swish", _keras_activation("swish"), ("silu",), keras_names=("swish", "silu"),
                    doc="x * sigmoid(x)"))
register(Activation("gelu", _keras_activation("gelu"), keras_names=("gelu",),
                    doc="x * Phi(x) (exact, erf form); GELU in TFLite, a lookup table on Ethos-U (Vela 5.2)"))
register(Activation("exp", _keras_activation("exponential"), ("exponential",), keras_names=("exponential",),
                    doc="e^x; EXP in TFLite, a lookup table on Ethos-U; unbounded, so it can overflow"))
register(Activation("bounded_exp", _bounded_exp, ("bexp",),
                    doc="exp(4 tanh(x / 4)): e^x near 0, but always in [e^-4, e^4], so it cannot overflow "
                        "(the co-design's stable psi; layers.BoundedExp); TANH and EXP in TFLite"))
register(Activation("prelu", _prelu, params_per_channel=1, doc="per-channel PReLU, slopes initialised to 0.25"))
register(Activation("linear", _keras_activation("linear"), ("identity", "none"), nonlinear=False,
                    keras_names=("linear",), doc="no activation (no op in the IR)"))
