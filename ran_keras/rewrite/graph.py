"""Reading a functional tf_keras model as a graph of linear units, and planning the folds.

Nothing here creates Keras layers: ``read_graph`` lists the model's nodes (layer calls),
``segments`` turns maximal runs of linear layers into *segments* of affine *units* (a Conv2D /
DepthwiseConv2D / Dense with the BatchNorms after it folded in, a standalone BatchNorm /
LayerScale as a per-channel scale, a ZeroPadding2D), and ``plan_segment`` splits each segment
into groups that become one layer each. ``ran_keras.rewrite.rebuild`` turns the plan into a new model.

A run of layers is a segment when each layer's output feeds only the next layer (and is not a
model output) and no non-linearity sits in between. A SharedAlphaPReLU whose alpha is forced to
1 becomes the identity (its ``complement=False`` calls) and a ReLU (its ``complement=True``
calls); every other activation ends a segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras.ir.costs import conv_macs, depthwise_macs
from ran_keras.rewrite import linear
from ran_keras.rewrite.defaults import CHAIN_POLICIES
from ran_keras.rewrite.linear import FoldError

LINEAR_KINDS = ("conv", "dw", "dense", "bn", "scale", "pad", "identity")


# --- nodes -------------------------------------------------------------------------------------

@dataclass
class GNode:
    """One layer call of the model."""
    key: str                      # "layer_name:node_index"
    layer: Any
    node: Any
    inputs: List[str]             # tensor keys of the Keras tensors it takes
    outputs: List[str]
    kind: str                     # 'input', 'relu' (forced alpha), 'opaque', or one of LINEAR_KINDS
    alpha: Optional[str] = None   # name of the forced SharedAlphaPReLU behind 'relu' / 'identity'
    reason: str = ""              # why a linear-looking layer is treated as opaque

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def linear_output(self) -> bool:
        """Whether its output is an affine function of its input (no fused activation)."""
        if self.kind not in LINEAR_KINDS:
            return False
        return _activation_name(self.layer) == "linear"


def tensor_key(kt) -> str:
    layer, node_index, tensor_index = kt._keras_history
    return f"{layer.name}:{node_index}:{tensor_index}"


def _activation_name(layer) -> str:
    from ran_keras.backend import keras
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    name = keras.activations.serialize(act)
    return name if isinstance(name, str) else str(name)


def _complement(node) -> bool:
    if len(node.call_args) > 1:
        return bool(node.call_args[1])
    return bool(node.call_kwargs.get("complement", False))


def _classify(layer, node, forced: Dict[str, float]) -> Tuple[str, Optional[str], str]:
    from ran_keras.backend import keras
    from ran_keras import layers as ran_layers
    kl = keras.layers
    if isinstance(layer, kl.InputLayer):
        return "input", None, ""
    if isinstance(layer, ran_layers.SharedAlphaPReLU):
        if layer.name in forced:
            return ("relu" if _complement(node) else "identity"), layer.name, ""
        return "opaque", None, ""
    if isinstance(layer, ran_layers.LayerScale):
        return "scale", None, ""
    if isinstance(layer, kl.BatchNormalization):
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        shape = node.keras_inputs[0].shape
        if len(axis) != 1 or axis[0] not in (-1, len(shape) - 1):
            return "opaque", None, f"BatchNormalization {layer.name} normalises axis {layer.axis}, not the channels"
        return "bn", None, ""
    if isinstance(layer, kl.DepthwiseConv2D):
        return "dw", None, ""
    if isinstance(layer, kl.Conv2D) and not isinstance(layer, kl.Conv2DTranspose):
        return "conv", None, ""
    if isinstance(layer, kl.Dense):
        return "dense", None, ""
    if isinstance(layer, kl.ZeroPadding2D) and layer.data_format == "channels_last":
        return "pad", None, ""
    if isinstance(layer, kl.Activation) and _activation_name(layer) == "linear":
        return "identity", None, ""
    return "opaque", None, ""


@dataclass
class ModelGraph:
    model: Any
    nodes: List[GNode]                                   # topological order
    producer: Dict[str, GNode]                           # tensor key -> node
    consumers: Dict[str, List[GNode]]                    # tensor key -> nodes (repeats kept)
    outputs: List[str]                                   # model output tensor keys

    def sole_consumer(self, tensor: str) -> Optional[GNode]:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and tensor not in self.outputs:
            return users[0]
        return None


def read_graph(model, forced: Dict[str, float]) -> ModelGraph:
    """The model's layer calls in topological order, with tensor producers and consumers."""
    if not getattr(model, "_is_graph_network", False):
        raise FoldError(f"fold works on functional (or Sequential) tf_keras models with a known input; "
                        f"{type(model).__name__} {model.name!r} is a subclassed model")
    nodes: List[GNode] = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            index = layer._inbound_nodes.index(node)
            outs = [f"{layer.name}:{index}:{i}" for i in range(len(_flat(node.outputs)))]
            ins = [tensor_key(kt) for kt in node.keras_inputs]
            kind, alpha, reason = _classify(layer, node, forced)
            nodes.append(GNode(f"{layer.name}:{index}", layer, node, ins, outs, kind, alpha, reason))
    producer = {t: n for n in nodes for t in n.outputs}
    consumers: Dict[str, List[GNode]] = {}
    for n in nodes:
        for t in n.inputs:
            consumers.setdefault(t, []).append(n)
    outputs = [tensor_key(t) for t in model.outputs]
    return ModelGraph(model, nodes, producer, consumers, outputs)


def _flat(structure) -> list:
    from ran_keras.backend import tf
    return tf.nest.flatten(structure)


# --- units -------------------------------------------------------------------------------------

@dataclass
class Unit:
    """One affine op of a segment: a main layer (or none) plus the per-channel scales folded in."""
    op: str                                  # 'conv', 'dw', 'dense', 'diag' or 'pad' (ZeroPadding2D)
    nodes: List[GNode]                       # main node first (if any), then folded BN/scale nodes
    kernel: Optional[np.ndarray]             # float64, in the main layer's own layout
    bias: np.ndarray                         # float64 (cout,)
    in_shape: Tuple[Optional[int], ...]      # without the batch axis
    out_shape: Tuple[Optional[int], ...]
    activation: str = "linear"
    blocker: Optional[str] = None            # why it cannot merge with neighbours (None: it can)

    @property
    def main(self) -> Optional[GNode]:
        return self.nodes[0] if self.op in ("conv", "dw", "dense") else None

    @property
    def names(self) -> List[str]:
        return [n.name for n in self.nodes]

    @property
    def cin(self) -> int:
        return int(self.in_shape[-1])

    @property
    def cout(self) -> int:
        return int(self.out_shape[-1])

    @property
    def family(self) -> Optional[str]:
        return {"conv": "conv", "dw": "conv", "dense": "dense"}.get(self.op)

    @property
    def kernel_size(self) -> Tuple[int, int]:
        if self.op in ("conv", "dw"):
            return tuple(self.main.layer.kernel_size)
        return (1, 1)

    @property
    def strides(self) -> Tuple[int, int]:
        if self.op in ("conv", "dw"):
            return tuple(self.main.layer.strides)
        return (1, 1)

    @property
    def padding(self) -> str:
        return self.main.layer.padding if self.op in ("conv", "dw") else "valid"

    @property
    def spatial(self) -> bool:
        return self.op in ("conv", "dw") and (self.kernel_size != (1, 1) or self.strides != (1, 1))

    @property
    def changed(self) -> bool:
        """Whether a BN / scale was folded into it (so it must be rebuilt with new weights)."""
        return self.main is not None and len(self.nodes) > 1

    @property
    def pads(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        return tuple(tuple(int(v) for v in p) for p in self.main_layer.padding) if self.op == "pad" else ((0, 0), (0, 0))

    @property
    def main_layer(self):
        return self.nodes[0].layer

    @property
    def macs(self) -> Optional[int]:
        """Multiply-accumulates per image; None when the spatial size is unknown."""
        return self._macs()

    @property
    def cost(self) -> int:
        """``macs`` for planning: an unknown spatial size counts as 1 (MACs per output pixel)."""
        return self._macs(unknown=1)

    def _macs(self, unknown: Optional[int] = None) -> Optional[int]:
        if self.op not in ("conv", "dw", "dense"):
            return 0
        groups = self.main.layer.groups if self.op == "conv" else 1
        return _macs(self.out_shape, self.kernel_size, self.cin, self.cout, depthwise=self.op == "dw",
                     groups=groups, unknown=unknown)

    def affine(self) -> linear.Unit:
        """This unit as a ``linear`` chain unit (only for units without a blocker; not for 'pad')."""
        if self.op == "pad":
            raise FoldError("a ZeroPadding2D has no affine form; rebuild handles it before composing")
        if self.op == "diag":
            return linear.Pointwise(self.kernel, self.bias)
        if self.op == "dense":
            return linear.Pointwise(self.kernel, self.bias)
        if self.op == "dw":
            kernel = self.kernel[..., 0]
            if not self.spatial:
                return linear.Pointwise(kernel[0, 0], self.bias)
            return linear.Spatial(kernel, self.bias, self.strides, self.padding, depthwise=True)
        if not self.spatial:
            return linear.Pointwise(self.kernel[0, 0], self.bias)
        return linear.Spatial(self.kernel, self.bias, self.strides, self.padding)


def _macs(out_shape, kernel_size, cin: int, cout: int, *, depthwise: bool = False, groups: int = 1,
          unknown: Optional[int] = None) -> Optional[int]:
    """MACs of a conv / depthwise conv / dense with output ``out_shape`` (no batch axis), by
    ``ran_keras.analysis.profiler``'s cost functions; None if a size is unknown (unless ``unknown`` stands in).

    The positions (every axis but channels) and the kh x kw taps are passed as the output size,
    so non-square kernels and Dense layers on any rank count too (the functions square ``kernel``).
    """
    dims = out_shape[:-1]
    if any(d is None for d in dims):
        if unknown is None:
            return None
        dims = tuple(unknown if d is None else d for d in dims)
    positions, taps = int(math.prod(int(d) for d in dims)), int(math.prod(kernel_size))
    if depthwise:
        return depthwise_macs(positions, taps, 1, cout)
    return conv_macs(positions, taps, 1, cin, cout, groups)


def _weights(layer) -> Dict[str, np.ndarray]:
    return {w.name.split("/")[-1].split(":")[0]: np.asarray(w.numpy(), np.float64) for w in layer.weights}


def _main_unit(n: GNode) -> Unit:
    layer = n.layer
    w = _weights(layer)
    in_shape, out_shape = _in_shape(n), _out_shape(n)
    blocker = None
    if n.kind == "dw":
        kernel = w["depthwise_kernel"]
        if layer.depth_multiplier != 1:
            blocker = f"depthwise convolution {layer.name} has depth_multiplier={layer.depth_multiplier} (accepted: 1)"
    else:
        kernel = w["kernel"]
        if n.kind == "conv" and layer.groups != 1:
            blocker = f"grouped convolution {layer.name} (groups={layer.groups}; accepted: 1)"
    if n.kind in ("conv", "dw"):
        if tuple(layer.dilation_rate) != (1, 1):
            blocker = f"dilated convolution {layer.name} (dilation_rate={tuple(layer.dilation_rate)}; accepted: (1, 1))"
        elif layer.data_format != "channels_last":
            blocker = f"{layer.name} is {layer.data_format} (accepted: channels_last)"
        elif layer.padding not in ("same", "valid"):
            blocker = f"{layer.name} has padding {layer.padding!r} (accepted: 'same', 'valid')"
    bias = w.get("bias")
    cout = int(out_shape[-1])
    bias = np.zeros(cout) if bias is None else bias
    return Unit(n.kind, [n], kernel, bias, in_shape, out_shape, _activation_name(layer), blocker)


def _scale_shift(n: GNode) -> Tuple[np.ndarray, np.ndarray]:
    w = _weights(n.layer)
    if n.kind == "scale":
        gamma = w["gamma"]
        return gamma, np.zeros_like(gamma)
    return linear.bn_affine(w.get("gamma"), w.get("beta"), w["moving_mean"], w["moving_variance"],
                            n.layer.epsilon)


@dataclass
class Segment:
    nodes: List[GNode]
    units: List[Unit]
    forced_identities: List[Tuple[int, str]]  # (index of the unit before it or -1, alpha layer name)
    input: str                                # tensor key entering the segment
    starts_after: Optional[GNode]             # the node producing the segment input

    @property
    def output(self) -> str:
        return self.nodes[-1].outputs[0]


def segments(graph: ModelGraph) -> List[Segment]:
    """Maximal runs of linear layers (see the module docstring)."""
    succ: Dict[str, GNode] = {}
    has_pred = set()
    for n in graph.nodes:
        if n.kind not in LINEAR_KINDS or len(n.inputs) != 1 or len(n.outputs) != 1:
            continue
        if not n.linear_output:
            continue
        nxt = graph.sole_consumer(n.outputs[0])
        if nxt is not None and nxt.kind in LINEAR_KINDS and len(nxt.inputs) == 1:
            succ[n.key] = nxt
            has_pred.add(nxt.key)
    out = []
    for n in graph.nodes:
        if n.kind not in LINEAR_KINDS or n.key in has_pred or len(n.inputs) != 1 or len(n.outputs) != 1:
            continue
        chain = [n]
        while chain[-1].key in succ:
            chain.append(succ[chain[-1].key])
        out.append(_segment(graph, chain))
    return out


def _segment(graph: ModelGraph, chain: List[GNode]) -> Segment:
    units: List[Unit] = []
    identities: List[Tuple[int, str]] = []
    for n in chain:
        if n.kind == "identity":
            if n.alpha is not None:
                identities.append((len(units) - 1, n.alpha))
            continue
        if n.kind in ("conv", "dw", "dense"):
            units.append(_main_unit(n))
        elif n.kind == "pad":
            shape = _out_shape(n)
            units.append(Unit("pad", [n], None, np.zeros(int(shape[-1])), _in_shape(n), shape))
        else:  # bn / scale
            scale, shift = _scale_shift(n)
            last = units[-1] if units and units[-1].op != "pad" else None
            if last is not None:  # folds into the unit before it (identities in between do not matter)
                if last.op == "diag":
                    last.kernel, last.bias = last.kernel * scale, last.bias * scale + shift
                else:
                    last.kernel, last.bias = linear.fold_scale_shift(last.kernel, last.bias, scale, shift,
                                                                     depthwise=last.op == "dw")
                last.nodes.append(n)
                last.out_shape = _out_shape(n)
            else:
                units.append(Unit("diag", [n], scale, shift, _in_shape(n), _out_shape(n)))
    start = graph.producer.get(chain[0].inputs[0])
    return Segment(chain, units, identities, chain[0].inputs[0], start)


def _node_index(n: GNode) -> int:
    return int(n.key.rsplit(":", 1)[1])


def _in_shape(n: GNode):
    return tuple(n.layer.get_input_shape_at(_node_index(n))[1:])


def _out_shape(n: GNode):
    return tuple(n.layer.get_output_shape_at(_node_index(n))[1:])


# --- planning ----------------------------------------------------------------------------------

@dataclass
class Group:
    """A contiguous run of units of one segment that becomes one layer (or is kept as it is)."""
    start: int
    stop: int
    merged: bool                      # more than one unit: composed with linear.compose
    border_map: bool = False          # needs a BorderBias (decided by group_cost; rebuild follows it)
    residual: Optional[GNode] = None  # the Add whose identity branch is folded into the kernel
    required: bool = False            # covers a forced-alpha span (AFRB collapse)
    macs_before: Optional[int] = 0   # None: the input size is not fixed
    macs_after: Optional[int] = 0


def required_spans(seg: Segment, graph: ModelGraph) -> Dict[str, Tuple[int, int]]:
    """For each forced alpha in the segment: the unit span that must fold into one conv.

    After a forced ``complement=True`` call (now a ReLU) the AFRB's expansion, depthwise conv and
    projection must collapse: from the segment's first unit to the first unit after the identity.
    Elsewhere, the units on both sides of a forced identity are glued together.
    """
    spans: Dict[str, Tuple[int, int]] = {}
    for before, alpha in seg.forced_identities:
        after = before + 1
        if after >= len(seg.units):
            after = before
        start = before
        if seg.starts_after is not None and seg.starts_after.kind == "relu" and seg.starts_after.alpha == alpha:
            start = 0
        start = max(start, 0)
        if after < 0:
            continue
        lo, hi = spans.get(alpha, (start, after))
        spans[alpha] = (min(lo, start), max(hi, after))
    return spans


def group_blocker(units: Sequence[Unit]) -> Optional[str]:
    """Why these units cannot become one layer (None if they can)."""
    if len(units) == 1:
        return None
    for u in units:
        if u.blocker:
            return u.blocker
    families = {u.family for u in units if u.family}
    if len(families) > 1:
        return "a Dense layer and a convolution in one chain (they fold only with their own kind)"
    spatial = [u for u in units if u.spatial]
    if len(spatial) > 1:
        return (f"two k x k or strided ops in one chain ({spatial[0].names[0]}, {spatial[1].names[0]}); "
                f"composing them is not a single 'same' convolution at the borders")
    for u in units[:-1]:
        if u.activation != "linear":
            return f"{u.names[0]} has a fused {u.activation!r} activation"
    pads = [i for i, u in enumerate(units) if u.op == "pad"]
    if pads:
        p = pads[0]
        after = [u for u in units[p + 1:] if u.spatial]
        if len(pads) > 1 or not after or after[0].padding != "valid" or "dense" in families:
            return (f"{units[p].names[0]} (ZeroPadding2D) folds only into a later 'valid' convolution of "
                    f"the same chain")
        if any(u.spatial or np.any(u.bias) for u in units[:p]):
            return (f"{units[p].names[0]} (ZeroPadding2D) follows a layer with a bias; padding commutes only "
                    f"with bias-free 1x1 layers")
    return None


def fold_group(units: Sequence[Unit]) -> Tuple[linear.Folded, Optional[Tuple[Optional[int], ...]]]:
    """The one layer a group becomes (for units ``group_blocker`` accepts), and the (H, W) input
    size of its k x k op (None without one): its border map is ``folded.border_map(size)``."""
    core = [u for u in units if u.op != "pad"]
    folded = linear.compose([u.affine() for u in core])
    if len(core) < len(units):  # group_blocker: bias-free 1x1s before the pad, a 'valid' op after it
        folded.tap_bias = None  # the padded ring carries every bias: the fold has no border term
    spatial = next((u for u in core if u.spatial), None)
    return folded, (tuple(spatial.in_shape[:2]) if spatial is not None else None)


def group_cost(units: Sequence[Unit], unknown: Optional[int] = 1) -> Tuple[Optional[int], bool, Optional[str]]:
    """(MACs of the merged layer, whether it needs a border map, problem) for mergeable units.

    The MACs count an unknown spatial size as ``unknown`` (1: per output pixel, for planning;
    None: the MACs are None). The border-map decision is ``Folded.needs_border_map``, made here
    once for the plan; the rebuilder follows ``Group.border_map``.
    """
    folded, size = fold_group(units)
    macs = _macs(units[-1].out_shape, folded.kernel_size, folded.cin, folded.cout, depthwise=folded.depthwise,
                 unknown=unknown)
    needs_map = folded.needs_border_map(size)
    if needs_map and any(s is None for s in size):
        return macs, True, ("the input size is not fixed, and this fold needs a border map, which is made for "
                            "one fixed size; rebuild the model at a fixed size (e.g. "
                            "ran_keras.create_model(..., input_shape=(H, W, C)), then "
                            "new_model.set_weights(model.get_weights())) and fold that")
    return macs, needs_map, None


def span_problem(seg: Segment, lo: int, hi: int) -> Optional[str]:
    """Why units lo..hi (inclusive) cannot become one layer, or None."""
    units = seg.units[lo:hi + 1]
    problem = group_blocker(units) or (group_cost(units)[2] if len(units) > 1 else None)
    if problem:
        return f"cannot collapse {units[0].names[0]} .. {units[-1].names[-1]}: {problem}"
    return None


def plan_segment(seg: Segment, spans: Sequence[Tuple[int, int]], policy: str) -> List[Group]:
    """Split a segment into groups: the required spans merged, the rest by ``policy``.

    'smaller' picks the split with the fewest MACs (ties: fewest layers) among merges that need no
    border map; 'always' merges every foldable run (fewest layers); 'none' merges only the
    required spans. Raises FoldError if a required span cannot be merged.
    """
    n = len(seg.units)
    spans = _merge_spans(spans)
    inside = set()
    for lo, hi in spans:
        problem = span_problem(seg, lo, hi)
        if problem:
            raise FoldError(problem)
        inside.update(range(lo + 1, hi + 1))       # no group boundary before these units

    def feasible(i: int, j: int):
        units = seg.units[i:j]
        if len(units) == 1:
            return units[0].cost, False
        if group_blocker(units):
            return None
        macs, needs_map, problem = group_cost(units)
        if problem:
            return None
        if (i, j - 1) in spans:
            return macs, needs_map
        if policy == "none" or (needs_map and policy != "always"):
            return None
        return macs, needs_map

    # dynamic programme over split points; key: (MACs, groups) for 'smaller', (groups, MACs) else
    best: List[Optional[Tuple[Tuple[int, int], List[Tuple[int, int, bool]]]]] = [None] * (n + 1)
    best[0] = ((0, 0), [])
    for j in range(1, n + 1):
        for i in range(j):
            if best[i] is None or i in inside:
                continue
            res = feasible(i, j)
            if res is None:
                continue
            macs, needs_map = res
            (m0, g0), parts = best[i]
            score = (m0 + macs, g0 + 1)
            key = score if policy == "smaller" else (score[1], score[0])
            cur = best[j]
            cur_key = None if cur is None else (cur[0] if policy == "smaller" else (cur[0][1], cur[0][0]))
            if cur is None or key < cur_key:
                best[j] = (score, parts + [(i, j, needs_map)])
    groups = []
    for i, j, needs_map in best[n][1]:
        units = seg.units[i:j]
        merged = j - i > 1
        macs = [u.macs for u in units]
        before = None if None in macs else sum(macs)
        after = group_cost(units, unknown=None)[0] if merged else before
        required = any(lo >= i and hi < j for lo, hi in spans) and merged
        groups.append(Group(i, j, merged, needs_map, None, required, before, after))
    return groups


def _merge_spans(spans: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    out: List[Tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def residual_add(seg: Segment, group: Group, graph: ModelGraph) -> Optional[GNode]:
    """The Add(chain(x), x) that can fold into the last group's kernel as an identity, if any."""
    from ran_keras.backend import keras
    units = seg.units[group.start:group.stop]
    if group.start != 0 or group.stop != len(seg.units):
        return None
    add = graph.sole_consumer(seg.output)
    if add is None or not isinstance(add.layer, keras.layers.Add) or len(add.inputs) != 2:
        return None
    other = [t for t in add.inputs if t != seg.output]
    if len(other) != 1 or other[0] != seg.input:
        return None
    if group_blocker(units) or any(u.blocker for u in units):
        return None
    if units[-1].activation != "linear" or units[0].cin != units[-1].cout:
        return None
    if len(units) == 1 and units[0].main is None:
        return None
    spatial = next((u for u in units if u.spatial), None)
    if spatial is not None and (spatial.strides != (1, 1) or spatial.padding != "same"):
        return None
    return add


__all__ = ["CHAIN_POLICIES", "GNode", "ModelGraph", "read_graph", "Unit", "Segment", "segments", "Group",
           "required_spans", "span_problem", "group_blocker", "fold_group", "group_cost", "plan_segment", "residual_add"]
