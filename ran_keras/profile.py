"""Parameters, MACs and non-linear units of a network, from its spec or from a built Keras model.

What is counted:

* **params**: every weight, including BatchNorm's moving mean and variance (they are part of
  the saved model and of the paper's rounded totals); ``trainable_params`` leaves those out.
* **MACs**: multiply-accumulates of convolutions (``conv``), depthwise convolutions
  (``depthwise``) and dense layers (``dense``) for one image. BatchNorm, activations, residual
  adds, pooling, LayerNorm and layer scale are element-wise and not counted; BN folds into
  the preceding convolution at deployment.
* **non-linear units**: the number of activation *channels* (the paper's Sec. 2.1 counting: an
  IBN with e = 6 has 6n + 6n units, a BN -> ReLU -> Conv block has m). A shared-alpha PReLU
  counts at each of its two places; the classifier's softmax is not counted.

``profile(spec)`` works analytically on the spec (no TensorFlow); ``profile(model)`` walks the
layers of a built Keras model. Tests check the two agree layer by layer for every registered
model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ran_keras import ir
from ran_keras.ir import same_size
from ran_keras.spec import NetworkSpec

MAC_KINDS = ("conv", "depthwise", "dense")


# --- pure cost functions -----------------------------------------------------------------------

def conv_params(kernel: int, cin: int, cout: int, bias: bool, groups: int = 1) -> int:
    return kernel * kernel * (cin // groups) * cout + (cout if bias else 0)


def conv_macs(out_h: int, out_w: int, kernel: int, cin: int, cout: int, groups: int = 1) -> int:
    return out_h * out_w * kernel * kernel * (cin // groups) * cout


def depthwise_params(kernel: int, channels: int, bias: bool) -> int:
    return kernel * kernel * channels + (channels if bias else 0)


def depthwise_macs(out_h: int, out_w: int, kernel: int, channels: int) -> int:
    return out_h * out_w * kernel * kernel * channels


def dense_params(fin: int, fout: int, bias: bool = True) -> int:
    return fin * fout + (fout if bias else 0)


# --- result types ------------------------------------------------------------------------------

@dataclass
class LayerRow:
    name: str
    op: str
    output_shape: Tuple[Optional[int], ...]
    params: int = 0
    trainable_params: int = 0
    macs: Optional[int] = 0          # None: a Keras layer whose spatial size is unknown (None dims)
    mac_kind: str = ""
    nonlinear_units: int = 0


@dataclass
class Profile:
    name: str
    input_shape: Tuple[Optional[int], ...]
    classes: Optional[int]
    source: str                       # 'spec' or 'keras'
    layers: List[LayerRow] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable_params for r in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return self.params - self.trainable_params

    @property
    def macs(self) -> Optional[int]:
        """Total MACs; None when a layer's MACs are unknown (a Keras model with None spatial dims)."""
        if any(r.macs is None for r in self.layers):
            return None
        return sum(r.macs for r in self.layers)

    @property
    def macs_by_kind(self) -> Dict[str, Optional[int]]:
        out: Dict[str, Optional[int]] = {k: 0 for k in MAC_KINDS}
        for r in self.layers:
            if r.mac_kind:
                out[r.mac_kind] = None if r.macs is None or out[r.mac_kind] is None else out[r.mac_kind] + r.macs
        return out

    @property
    def nonlinear_units(self) -> int:
        return sum(r.nonlinear_units for r in self.layers)

    def by_layer(self) -> "OrderedDict[str, Dict[str, int]]":
        """Totals per layer name (a shared layer's calls are summed)."""
        out: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
        for r in self.layers:
            d = out.setdefault(r.name, {"params": 0, "trainable_params": 0, "macs": 0, "nonlinear_units": 0})
            for key in d:
                value = getattr(r, key)
                d[key] = None if value is None or d[key] is None else d[key] + value
        return out

    def to_dict(self, layers: bool = False) -> Dict[str, Any]:
        out = {"name": self.name, "input_shape": list(self.input_shape), "classes": self.classes,
               "params": self.params, "trainable_params": self.trainable_params,
               "non_trainable_params": self.non_trainable_params, "macs": self.macs,
               "macs_by_kind": self.macs_by_kind, "nonlinear_units": self.nonlinear_units,
               "source": self.source}
        if layers:
            out["layers"] = [dict(asdict(r), output_shape=list(r.output_shape)) for r in self.layers]
        return out


# --- from a spec -------------------------------------------------------------------------------

def _op_row(op: ir.Op, name: str, h: int, w: int, c: int, seen: set) -> Tuple[LayerRow, int, int, int]:
    """Cost of one IR op on an (h, w, c) input; returns the row and the output (h, w, c)."""
    if isinstance(op, ir.Conv):
        ho, wo = same_size(h, op.stride), same_size(w, op.stride)
        p = conv_params(op.kernel, c, op.filters, op.bias)
        return (LayerRow(name, "Conv2D", (ho, wo, op.filters), p, p,
                         conv_macs(ho, wo, op.kernel, c, op.filters), "conv"), ho, wo, op.filters)
    if isinstance(op, ir.DepthwiseConv):
        if op.padding == "valid":
            ho, wo = (h - op.kernel) // op.stride + 1, (w - op.kernel) // op.stride + 1
        else:
            ho, wo = same_size(h, op.stride), same_size(w, op.stride)
        p = depthwise_params(op.kernel, c, op.bias)
        return (LayerRow(name, "DepthwiseConv2D", (ho, wo, c), p, p,
                         depthwise_macs(ho, wo, op.kernel, c), "depthwise"), ho, wo, c)
    if isinstance(op, ir.BatchNorm):
        return LayerRow(name, "BatchNormalization", (h, w, c), 4 * c, 2 * c), h, w, c
    if isinstance(op, ir.LayerNorm):
        return LayerRow(name, "LayerNormalization", (h, w, c), 2 * c, 2 * c), h, w, c
    if isinstance(op, ir.Act):
        p = c if op.fn == "prelu" else 0
        return LayerRow(name, f"Activation({op.fn})", (h, w, c), p, p, nonlinear_units=c), h, w, c
    if isinstance(op, ir.SharedPReLU):
        p = 0 if name in seen else 1
        seen.add(name)
        label = "SharedAlphaPReLU(1-a)" if op.complement else "SharedAlphaPReLU(a)"
        return LayerRow(name, label, (h, w, c), p, p, nonlinear_units=c), h, w, c
    if isinstance(op, ir.MaxPool):
        ho, wo = same_size(h, op.stride), same_size(w, op.stride)
        return LayerRow(name, "MaxPooling2D", (ho, wo, c)), ho, wo, c
    if isinstance(op, ir.LayerScale):
        return LayerRow(name, "LayerScale", (h, w, c), c, c), h, w, c
    if isinstance(op, ir.DropPath):
        return LayerRow(name, "Dropout", (h, w, c)), h, w, c
    if isinstance(op, ir.ZeroPad):
        ho, wo = h + sum(ir.same_padding(h, op.kernel, op.stride)), w + sum(ir.same_padding(w, op.kernel, op.stride))
        return LayerRow(name, "ZeroPadding2D", (ho, wo, c)), ho, wo, c
    raise TypeError(f"no cost rule for IR op {op!r}")


def _run_ops(ops, prefix: str, h: int, w: int, c: int, rows: List[LayerRow], seen: set):
    for op in ops:
        row, h, w, c = _op_row(op, ir.layer_name(prefix, op.name), h, w, c, seen)
        rows.append(row)
    return h, w, c


def profile_spec(spec: NetworkSpec, input_shape: Optional[Sequence[int]] = None, *,
                 input_size: Optional[int] = None, classes: int = 1000,
                 include_top: bool = True, name: Optional[str] = None) -> Profile:
    """Analytic profile of ``spec`` (no TensorFlow). Default input: spec.input_size square."""
    if input_shape is None:
        size = input_size or spec.input_size
        input_shape = (size, size, spec.input_channels)
    h, w, c = spec.check_input_shape(input_shape)
    name = name or spec.name
    prof = Profile(name, (h, w, c), classes if include_top else None, "spec")
    rows = prof.layers
    for site in spec.sites:
        graph = site.graph(spec)
        prefix = f"{name}_{site.prefix}"
        seen: set = set()
        h1, w1, c1 = _run_ops(graph.main, prefix, h, w, c, rows, seen)
        if graph.shortcut is not None:
            _run_ops(graph.shortcut, prefix, h, w, c, rows, seen)
            rows.append(LayerRow(ir.layer_name(prefix, "add"), "Add", (h1, w1, c1)))
        h, w, c = _run_ops(graph.post, prefix, h1, w1, c1, rows, seen)
    if include_top:
        rows.append(LayerRow(f"{name}_avg_pool", "GlobalAveragePooling2D", (c,)))
        if spec.classifier_norm == "ln":
            rows.append(LayerRow(f"{name}_classifier_ln", "LayerNormalization", (c,), 2 * c, 2 * c))
        if spec.classifier_dropout > 0:
            rows.append(LayerRow(f"{name}_dropout", "Dropout", (c,)))
        rows.append(LayerRow(f"{name}_predictions", "Dense", (classes,), dense_params(c, classes),
                             dense_params(c, classes), c * classes, "dense"))
    return prof


# --- from a Keras model ------------------------------------------------------------------------

def profile_model(model, name: Optional[str] = None) -> Profile:
    """Profile a built Keras (tf_keras) model by walking its layers and their calls."""
    from ran_keras.backend import keras  # a Keras model exists, so Keras is already loaded
    from ran_keras import layers as ran_layers

    kl = keras.layers
    shape_in = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else ()
    out_shape = model.output_shape
    classes = out_shape[-1] if isinstance(out_shape, tuple) and len(out_shape) == 2 else None
    prof = Profile(name or model.name, shape_in, classes, "keras")
    nonlinear_layers = (kl.ReLU, kl.PReLU, kl.LeakyReLU, kl.ELU, ran_layers.HardSwish,
                        ran_layers.SharedAlphaPReLU)
    network_nodes = getattr(model, "_network_nodes", None)

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            sub = profile_model(layer)
            prof.layers.extend(sub.layers)
            continue
        total = int(sum(math.prod(v.shape) for v in layer.weights))
        trainable = int(sum(math.prod(v.shape) for v in layer.trainable_weights))
        node_ids = [i for i in range(len(layer.inbound_nodes))
                    if network_nodes is None or f"{layer.name}_ib-{i}" in network_nodes]
        for n, idx in enumerate(node_ids or [0]):
            try:
                in_shape = layer.get_input_shape_at(idx)
                out = layer.get_output_shape_at(idx)
            except (RuntimeError, ValueError, IndexError):
                continue
            macs, kind, units = 0, "", 0
            if isinstance(layer, kl.DepthwiseConv2D):
                kh, kw = layer.kernel_size
                macs = _prod(out[1], out[2], kh * kw * out[3])
                kind = "depthwise"
            elif isinstance(layer, kl.SeparableConv2D):
                kh, kw = layer.kernel_size
                cin = in_shape[-1]
                macs = _prod(out[1], out[2], kh * kw * cin * layer.depth_multiplier
                             + cin * layer.depth_multiplier * out[3])
                kind = "conv"
            elif isinstance(layer, kl.Conv2D) and not isinstance(layer, kl.Conv2DTranspose):
                kh, kw = layer.kernel_size
                macs = _prod(out[1], out[2], kh * kw * (in_shape[-1] // layer.groups) * out[3])
                kind = "conv"
            elif isinstance(layer, kl.Dense):
                macs = _prod(*in_shape[1:], layer.units)
                kind = "dense"
            act = getattr(layer, "activation", None)
            act_name = getattr(act, "__name__", "linear") if act is not None else "linear"
            if isinstance(layer, nonlinear_layers):
                units = out[-1]
            elif isinstance(layer, kl.Activation) or (kind in ("conv", "depthwise")):
                units = out[-1] if act_name not in ("linear", "softmax") else 0
            prof.layers.append(LayerRow(layer.name, type(layer).__name__, tuple(out[1:]),
                                        total if n == 0 else 0, trainable if n == 0 else 0,
                                        macs, kind, int(units)))
    return prof


def _prod(*dims: Optional[int]) -> Optional[int]:
    """Product of dimensions, or None if one is unknown."""
    return None if any(d is None for d in dims) else int(math.prod(dims))


def profile(model_or_spec, input_shape: Optional[Sequence[int]] = None, **kwargs) -> Profile:
    """Profile a ``NetworkSpec``, a registered model name, a spec JSON path, or a Keras model."""
    if hasattr(model_or_spec, "layers") and hasattr(model_or_spec, "get_config"):
        return profile_model(model_or_spec, name=kwargs.get("name"))
    from ran_keras.registry import resolve_spec
    return profile_spec(resolve_spec(model_or_spec), input_shape, **kwargs)
