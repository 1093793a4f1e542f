"""Map foreign weights ({key: array}) onto a model's weights ({name: shape}) by rules, all or nothing.

Layout-independent: a rule list says how source keys become target names; the mapper applies it
and checks the result completely. It never loads part of a model: any source key no rule takes,
any target left without a value, any shape that does not fit after the transforms, and any two
sources landing on one target are collected and raised together in one ``MappingError`` that
lists every case.

Rules (first match wins, so put specific rules before general ones):

* ``rule(source_regex, target_template, *transforms)``: the regex must match the whole source key;
  the template is filled from its named groups and the ``context`` (``{m}``: the model name),
  with integer offsets allowed (``{s+1}``, ``{j-1}``).
* ``ignore(source_regex)``: keys that carry no weights (``num_batches_tracked``, detector heads).
* ``fill(target_regex, value)``: targets the source does not have, set to a constant (a bias the
  source model was built without). Listed in the result's ``filled``.
* ``split(source_regex, [templates], axis)``: one source tensor cut into equal parts.

Transforms (names, applied in order; a callable ``f(array, target_shape)`` works too):
``conv`` OIHW -> HWIO, ``depthwise`` (C,1,k,k) -> (k,k,C,1), ``linear`` (out,in) -> (in,out),
``reshape`` to the target's shape (same size), ``squeeze``.

``select_state_dict`` picks the weights out of a training checkpoint (``model_ema`` before
``model`` unless told otherwise); ``load_weights`` maps straight into a Keras model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ran_keras.weights.errors import WeightsError

Shape = Tuple[int, ...]
Transform = Union[str, Callable[[np.ndarray, Shape], np.ndarray]]

TRANSFORMS: Dict[str, Callable[[np.ndarray, Shape], np.ndarray]] = {
    "conv": lambda a, shape: np.transpose(a, (2, 3, 1, 0)),        # OIHW -> HWIO
    "depthwise": lambda a, shape: np.transpose(a, (2, 3, 0, 1)),   # (C,1,k,k) -> (k,k,C,1)
    "linear": lambda a, shape: np.transpose(a),                    # (out,in) -> (in,out)
    "reshape": lambda a, shape: np.reshape(a, shape) if a.size == int(np.prod(shape)) else a,
    "squeeze": lambda a, shape: np.squeeze(a),
}


@dataclass(frozen=True)
class Rule:
    """One mapping rule; build it with ``rule``, ``ignore``, ``fill`` or ``split``."""
    kind: str                      # 'map' | 'ignore' | 'fill' | 'split'
    pattern: str                   # source regex (map/ignore/split) or target regex (fill)
    targets: Tuple[str, ...] = ()  # target templates (map: one, split: several)
    transforms: Tuple[Transform, ...] = ()
    value: float = 0.0
    axis: int = 0

    def __post_init__(self):
        try:
            object.__setattr__(self, "_regex", re.compile(self.pattern))
        except re.error as err:
            raise WeightsError(f"bad rule pattern {self.pattern!r}: {err}") from None
        for t in self.transforms:
            if not callable(t) and t not in TRANSFORMS:
                raise WeightsError(f"unknown transform {t!r}; known: {', '.join(TRANSFORMS)}")

    def match(self, key: str) -> Optional[re.Match]:
        return self._regex.fullmatch(key)  # type: ignore[attr-defined]


def rule(source: str, target: str, *transforms: Transform) -> Rule:
    """Source keys matching ``source`` become ``target`` (a template), after ``transforms``."""
    return Rule("map", source, (target,), tuple(transforms))


def ignore(source: str) -> Rule:
    """Source keys matching ``source`` are dropped on purpose."""
    return Rule("ignore", source)


def fill(target: str, value: float = 0.0) -> Rule:
    """Targets matching ``target`` (a regex over target names) that no source reaches get ``value``."""
    return Rule("fill", target, value=float(value))


def split(source: str, targets: Sequence[str], axis: int = 0, *transforms: Transform) -> Rule:
    """A source tensor cut into ``len(targets)`` equal parts along ``axis`` (before ``transforms``)."""
    return Rule("split", source, tuple(targets), tuple(transforms), axis=axis)


@dataclass
class MappingResult:
    """Mapped arrays by target name, and how each was obtained."""
    arrays: Dict[str, np.ndarray]
    sources: Dict[str, str]                       # target -> source key (or 'fill=<value>')
    ignored: List[str] = field(default_factory=list)
    filled: List[str] = field(default_factory=list)


class MappingError(WeightsError):
    """Weights that do not fit: every unmapped key, missing target, shape mismatch and collision."""

    def __init__(self, unmapped, unknown, missing, mismatched, collisions, what: str = ""):
        self.unmapped, self.unknown, self.missing = list(unmapped), list(unknown), list(missing)
        self.mismatched, self.collisions = list(mismatched), list(collisions)
        sections = [
            ("source keys no rule maps", self.unmapped),
            ("source keys mapped to names the model does not have", [f"{s} -> {t}" for s, t in self.unknown]),
            ("model weights left without a value", self.missing),
            ("shape mismatches (source -> target: got, expected)",
             [f"{s} -> {t}: {g} vs {e}" for s, t, g, e in self.mismatched]),
            ("targets reached by more than one source", [f"{t} <- {', '.join(s)}" for t, s in self.collisions]),
        ]
        lines = [f"weights do not fit{' ' + what if what else ''}; nothing was loaded:"]
        for title, items in sections:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {item}" for item in items]
        super().__init__("\n".join(lines))


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``{name}`` and ``{name+N}``/``{name-N}`` (integer arithmetic) from ``values``."""
    def one(match: re.Match) -> str:
        name, offset = match.group(1), match.group(2)
        if name not in values:
            raise WeightsError(f"template {template!r} uses {{{name}}}, which neither the pattern nor the "
                               f"context defines (have: {', '.join(sorted(values))})")
        return str(int(values[name]) + int(offset)) if offset else str(values[name])
    return re.sub(r"\{(\w+)([+-]\d+)?\}", one, template)


def map_weights(source: Mapping[str, np.ndarray], target: Mapping[str, Sequence[int]], rules: Sequence[Rule],
                context: Optional[Mapping[str, Any]] = None, what: str = "") -> MappingResult:
    """Apply ``rules`` to every source key; the result covers every target or ``MappingError`` is raised."""
    context = dict(context or {})
    shapes = {name: tuple(int(d) for d in shape) for name, shape in target.items()}
    result = MappingResult({}, {})
    unmapped, unknown, mismatched = [], [], []
    claims: Dict[str, List[str]] = {}
    for key, array in source.items():
        found = _first_match(rules, key)
        if found is None:
            unmapped.append(key)
            continue
        r, match = found
        if r.kind == "ignore":
            result.ignored.append(key)
            continue
        values = {**context, **{k: v for k, v in match.groupdict().items() if v is not None}}
        for name, part in _parts(r, np.asarray(array), values):
            claims.setdefault(name, []).append(key)
            if name not in shapes:
                unknown.append((key, name))
                continue
            converted = _apply(r.transforms, part, shapes[name])
            if converted.shape != shapes[name]:
                mismatched.append((key, name, tuple(np.shape(part)), shapes[name]))
                continue
            result.arrays[name] = np.ascontiguousarray(converted)
            result.sources[name] = key
    _fill(rules, shapes, result)
    missing = [name for name in shapes if name not in result.arrays and not claims.get(name)]
    collisions = [(name, keys) for name, keys in claims.items() if len(keys) > 1]
    if unmapped or unknown or missing or mismatched or collisions:
        raise MappingError(unmapped, unknown, missing, mismatched, collisions, what)
    return result


def _first_match(rules: Sequence[Rule], key: str):
    for r in rules:
        if r.kind == "fill":
            continue
        match = r.match(key)
        if match is not None:
            return r, match
    return None


def _parts(r: Rule, array: np.ndarray, values: Mapping[str, Any]):
    names = [render(t, values) for t in r.targets]
    if r.kind == "map":
        return [(names[0], array)]
    if array.ndim == 0 or array.shape[r.axis] % len(names):
        raise WeightsError(f"cannot split a tensor of shape {array.shape} into {len(names)} equal parts "
                           f"along axis {r.axis} (rule {r.pattern!r})")
    return list(zip(names, np.split(array, len(names), axis=r.axis)))


def _apply(transforms: Sequence[Transform], array: np.ndarray, shape: Shape) -> np.ndarray:
    for t in transforms:
        try:
            array = (t if callable(t) else TRANSFORMS[t])(array, shape)
        except ValueError:
            return array  # an impossible transpose/reshape is reported as the shape mismatch it is
    return array


def _fill(rules: Sequence[Rule], shapes: Mapping[str, Shape], result: MappingResult) -> None:
    for r in rules:
        if r.kind != "fill":
            continue
        for name, shape in shapes.items():
            if name not in result.arrays and r.match(name):
                result.arrays[name] = np.full(shape, r.value, np.float32)
                result.sources[name] = f"fill={r.value:g}"
                result.filled.append(name)


def select_state_dict(checkpoint: Any, prefer_ema: bool = True,
                      strip_prefix: str = "module.") -> Tuple[Dict[str, np.ndarray], str]:
    """The weights in a training checkpoint and which entry they came from.

    ``model_ema`` is preferred over ``model`` (the EMA weights are the ones evaluated) unless
    ``prefer_ema=False``; ``state_dict`` and a bare state dict also work. A ``strip_prefix`` that every
    key carries (DistributedDataParallel's ``module.``) is removed.
    """
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    order = ["model_ema", "model", "state_dict"] if prefer_ema else ["model", "model_ema", "state_dict"]
    for entry in order:
        value = checkpoint.get(entry)
        if isinstance(value, Mapping) and value and _all_arrays(value):
            return _strip(dict(value), strip_prefix), entry
    if checkpoint and _all_arrays(checkpoint):
        return _strip(dict(checkpoint), strip_prefix), "<state dict>"
    raise WeightsError(f"no state dict in the checkpoint: entries {', '.join(map(str, checkpoint))}; expected "
                       "'model_ema', 'model' or 'state_dict' holding tensors")


def _all_arrays(mapping: Mapping) -> bool:
    return all(isinstance(v, np.ndarray) for v in mapping.values())


def _strip(state: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    if prefix and state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def model_weight_shapes(model) -> Dict[str, Shape]:
    """A Keras model's weights as {name without ':0': shape}, in model order; names must be unique."""
    shapes: Dict[str, Shape] = {}
    for w in model.weights:
        name = w.name[:-2] if w.name.endswith(":0") else w.name
        if name in shapes:
            raise WeightsError(f"model {model.name!r} has two weights named {name!r}; cannot map by name")
        shapes[name] = tuple(int(d) for d in w.shape)
    return shapes


def load_weights(model, source: Mapping[str, np.ndarray], rules: Sequence[Rule],
                 context: Optional[Mapping[str, Any]] = None) -> MappingResult:
    """Map ``source`` onto a Keras model and assign every weight; on any problem nothing is assigned."""
    context = {"m": model.name, **(context or {})}
    result = map_weights(source, model_weight_shapes(model), rules, context, what=f"model {model.name!r}")
    variables = {name: w for name, w in zip(model_weight_shapes(model), model.weights)}
    for name, array in result.arrays.items():
        variables[name].assign(array.astype(variables[name].dtype.as_numpy_dtype))
    return result


__all__ = ["Rule", "rule", "ignore", "fill", "split", "render", "map_weights", "MappingResult", "MappingError",
           "select_state_dict", "model_weight_shapes", "load_weights", "TRANSFORMS"]
