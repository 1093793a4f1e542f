"""Build the folded model: a new functional tf_keras model from a fold plan, weights transferred.

Layers the plan leaves alone are re-created from their configs (same names, same weights; a
shared layer stays shared). Folded groups become one Conv2D / DepthwiseConv2D / Dense, plus a
``BorderBias`` where the fold needs its border map. The original model is only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set

import numpy as np

from ran_keras.backend import keras, tf
from ran_keras.layers import CUSTOM_OBJECTS, BorderBias
from ran_keras.rewrite import linear
from ran_keras.rewrite.graph import GNode, Group, ModelGraph, Segment, Unit, fold_group, tensor_key

#: op-name endings of ran_keras blocks, stripped to name the folded layer after its block
_BLOCK_OPS = ("expand", "dw", "project", "conv", "pre_bn", "bn")


@dataclass
class Emitted:
    """What one folded group became."""
    segment: Segment
    group: Group
    layers: List[str]                 # names in the new model
    output: Any                       # the new KerasTensor at the group's output
    original_output: str              # tensor key of the same point in the original model
    border_values: int = 0


class _Namer:
    def __init__(self, taken: Set[str]):
        self.taken = set(taken)

    def __call__(self, base: str) -> str:
        name, i = base, 2
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def block_prefix(name: str) -> str:
    """'m_stage1_block1_sub1_expand' -> 'm_stage1_block1_sub1_'; other names -> name + '_'."""
    for op in _BLOCK_OPS:
        if name.endswith("_" + op):
            return name[: -len(op)]
    return name + "_"


class Rebuilder:
    def __init__(self, graph: ModelGraph, segments: Sequence[Segment], plans: Dict[int, List[Group]]):
        self.graph = graph
        self.segments = list(segments)
        self.plans = plans
        self.seg_of_last = {seg.nodes[-1].key: i for i, seg in enumerate(self.segments)}
        self.in_segment = {n.key for seg in self.segments for n in seg.nodes}
        self.absorbed_adds = {g.residual.key for groups in plans.values() for g in groups if g.residual}
        self.new: Dict[str, Any] = {}
        self.clones: Dict[str, Any] = {}
        self.emitted: List[Emitted] = []
        self.namer = _Namer(self._kept_names())
        self.calls: Dict[str, int] = {}
        for n in graph.nodes:
            self.calls[n.name] = self.calls.get(n.name, 0) + 1

    def _kept_names(self) -> Set[str]:
        """Names of original layers that appear in the new model under their own name."""
        kept = {n.name for n in self.graph.nodes
                if n.key not in self.in_segment and n.key not in self.absorbed_adds and n.kind != "relu"}
        for i, seg in enumerate(self.segments):
            for group in self.plans[i]:
                if not group.merged:
                    unit = seg.units[group.start]
                    kept.update(unit.names if unit.main is None else [unit.names[0]])
        return kept

    # --- driver --------------------------------------------------------------------------------

    def build(self, name: Optional[str] = None):
        model = self.graph.model
        for n in self.graph.nodes:
            if n.kind == "input":
                self._input(n)
            elif n.key in self.seg_of_last:
                self._segment(self.segments[self.seg_of_last[n.key]], self.plans[self.seg_of_last[n.key]])
            elif n.key in self.in_segment or n.key in self.absorbed_adds:
                continue
            elif n.kind == "relu":
                self._relu(n)
            else:
                self._clone_call(n)
        inputs = tf.nest.map_structure(lambda t: self.new[tensor_key(t)], model._nested_inputs)
        outputs = tf.nest.map_structure(lambda t: self.new[tensor_key(t)], model._nested_outputs)
        return keras.Model(inputs, outputs, name=name or model.name)

    # --- plain layers --------------------------------------------------------------------------

    def _input(self, n: GNode) -> None:
        cfg = n.layer.get_config()
        tensor = keras.Input(batch_shape=cfg["batch_input_shape"], dtype=cfg["dtype"], name=cfg["name"],
                             sparse=cfg.get("sparse", False), ragged=cfg.get("ragged", False))
        self.new[n.outputs[0]] = tensor

    def _clone(self, layer):
        if layer.name not in self.clones:
            with keras.utils.custom_object_scope(CUSTOM_OBJECTS):
                self.clones[layer.name] = layer.__class__.from_config(layer.get_config())
        return self.clones[layer.name]

    def _call(self, layer, original, *args, **kwargs):
        fresh = not layer.built
        out = layer(*args, **kwargs)
        if fresh and original is not None:
            layer.set_weights(original.get_weights())
        return out

    def _clone_call(self, n: GNode) -> None:
        replace = lambda v: self.new[tensor_key(v)] if hasattr(v, "_keras_history") else v  # noqa: E731
        args = tf.nest.map_structure(replace, n.node.call_args)
        kwargs = tf.nest.map_structure(replace, n.node.call_kwargs)
        out = self._call(self._clone(n.layer), n.layer, *args, **kwargs)
        for key, tensor in zip(n.outputs, tf.nest.flatten(out)):
            self.new[key] = tensor

    def _relu(self, n: GNode) -> None:
        consumer = self.graph.sole_consumer(n.outputs[0])
        if consumer is not None and consumer.kind in ("conv", "dw", "dense"):
            base = block_prefix(consumer.name) + "act"
        else:
            base = f"{n.alpha}_relu"
        layer = keras.layers.ReLU(name=self.namer(base))
        self.new[n.outputs[0]] = layer(self.new[n.inputs[0]])

    # --- segments ------------------------------------------------------------------------------

    def _segment(self, seg: Segment, groups: List[Group]) -> None:
        x = self.new[seg.input]
        for group in groups:
            units = seg.units[group.start:group.stop]
            last_node = units[-1].nodes[-1]
            if group.merged:
                x, names, values = self._merged(seg, group, x)
            else:
                x, names, values = self._single(group, units[0], x)
            if group.merged or units[0].changed or group.residual is not None:
                self.emitted.append(Emitted(seg, group, names, x, last_node.outputs[0], values))
        self.new[seg.output] = x
        last = groups[-1] if groups else None
        if last is not None and last.residual is not None:
            self.new[last.residual.outputs[0]] = x

    def _single(self, group: Group, unit, x):
        if unit.op in ("diag", "pad"):
            for n in unit.nodes:
                x = self._call(self._clone(n.layer), n.layer, x)
            return x, [n.name for n in unit.nodes], 0
        main = unit.main.layer
        if not unit.changed and group.residual is None:
            return self._call(self._clone(main), main, x), [main.name], 0
        kernel, bias = unit.kernel, unit.bias
        if group.residual is not None:
            kernel = _with_identity(unit)
        cfg = dict(main.get_config(), use_bias=True)
        if self.calls[main.name] > 1:  # a shared layer: its other calls keep the original weights
            cfg["name"] = self.namer(main.name + "_fold")
        layer = main.__class__.from_config(cfg)
        y = layer(x)
        layer.set_weights([_store(kernel, layer), _store(bias, layer)])
        return y, [layer.name], 0

    def _merged(self, seg: Segment, group: Group, x):
        units = seg.units[group.start:group.stop]
        pad = next((u for u in units if u.op == "pad"), None)
        core = [u for u in units if u.op != "pad"]
        folded, size = fold_group(units)   # with a pad: no border term (see graph.fold_group)
        names: List[str] = []
        if pad is not None:
            pad_size = pad.in_shape[:2]
            if all(n is not None for n in pad_size) and all(
                    linear.same_padding(int(n), k, st) == p
                    for n, k, st, p in zip(pad_size, folded.kernel_size, folded.strides, pad.pads)):
                folded.padding = "same"
            else:
                layer = self._clone(pad.main_layer)
                x = self._call(layer, pad.main_layer, x)
                names.append(layer.name)
        if group.residual is not None:
            folded = folded.with_identity()
        activation = units[-1].activation
        first = next((u for u in core if u.main is not None), core[0])
        dtype = first.main_layer.dtype
        base = block_prefix(first.names[0])
        op = "dw" if folded.depthwise else "conv"
        conv_name = self.namer(base + op if base != first.names[0] + "_" else first.names[0] + "_fold")
        border = group.border_map   # decided once, by graph.group_cost when planning
        fused = "linear" if border else activation
        if first.family == "dense":
            layer = keras.layers.Dense(folded.cout, activation=fused, name=conv_name, dtype=dtype)
            weights = [folded.kernel[0, 0]]
        elif folded.depthwise:
            layer = keras.layers.DepthwiseConv2D(folded.kernel_size, strides=folded.strides, padding=folded.padding,
                                                 activation=fused, name=conv_name, dtype=dtype)
            weights = [folded.kernel[..., None]]
        else:
            layer = keras.layers.Conv2D(folded.cout, folded.kernel_size, strides=folded.strides,
                                        padding=folded.padding, activation=fused, name=conv_name, dtype=dtype)
            weights = [folded.kernel]
        y = layer(x)
        layer.set_weights([_store(w, layer) for w in weights + [folded.bias]])
        names.append(layer.name)
        values = 0
        if border:
            bmap = folded.border_map(size)
            bb = BorderBias(name=self.namer(conv_name + "_border"), dtype=dtype)
            y = bb(y)
            bb.set_weights([_store(bmap, bb)])
            names.append(bb.name)
            values = int(bmap.size)
            if activation != "linear":
                act = keras.layers.Activation(activation, name=self.namer(conv_name + "_act"))
                y = act(y)
                names.append(act.name)
        return y, names, values


def _store(array: np.ndarray, layer) -> np.ndarray:
    return np.asarray(array, dtype=np.dtype(layer.dtype or "float32"))


def _with_identity(unit: Unit) -> np.ndarray:
    """A single unit's kernel, in its layer's layout, with the residual identity added
    (``linear.Folded.with_identity``: the centre tap)."""
    if unit.op == "dw":
        folded = linear.Folded(unit.kernel[..., 0], unit.bias, unit.strides, unit.padding, depthwise=True)
        return folded.with_identity().kernel[..., None]
    if unit.op == "dense":
        return linear.Folded(unit.kernel[None, None], unit.bias).with_identity().kernel[0, 0]
    return linear.Folded(unit.kernel, unit.bias, unit.strides, unit.padding).with_identity().kernel


__all__ = ["Rebuilder", "Emitted", "block_prefix"]
