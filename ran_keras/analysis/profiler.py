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
from ran_keras.ir.costs import dense_params
from ran_keras.spec import NetworkSpec

MAC_KINDS = ("conv", "depthwise", "dense")


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

def profile_spec(spec: NetworkSpec, input_shape: Optional[Sequence[Optional[int]]] = None, *,
                 input_size: Optional[int] = None, classes: int = 1000,
                 include_top: bool = True, name: Optional[str] = None) -> Profile:
    """Analytic profile of ``spec`` (no TensorFlow): one row per layer the builder makes, each from
    its IR op's cost rule. Default input: spec.input_size square; None sizes give None MACs."""
    if input_shape is None:
        size = input_size or spec.input_size
        input_shape = (size, size, spec.input_channels)
    shape = spec.check_input_shape(input_shape)
    name = name or spec.name
    prof = Profile(name, shape, classes if include_top else None, "spec")
    for site in spec.sites:
        shape = _add_rows(prof.layers, site.graph(spec).ops, shape, f"{name}_{site.prefix}")
    if include_top:
        prof.layers.extend(top_rows(spec, shape[2], classes, name))
    return prof


def _add_rows(rows: List[LayerRow], ops, shape, prefix: str):
    """Append one row per leaf op of ``ops``; returns the output shape. A layer called twice (the
    AFRB's shared PReLU) holds its weights once, as in Keras."""
    leaves, out = ir.trace(ops, shape)
    seen = set()
    for leaf in leaves:
        name = ir.layer_name(prefix, leaf.op.name)
        c = leaf.op.cost(leaf.in_shape, leaf.out_shape)
        first = name not in seen
        seen.add(name)
        rows.append(LayerRow(name, leaf.op.row_label(), tuple(leaf.out_shape), c.params if first else 0,
                             c.trainable if first else 0, c.macs, c.mac_kind, c.nonlinear_units))
    return out


def block_rows(spec: NetworkSpec, site, shape, name: Optional[str] = None) -> Tuple[List[LayerRow], tuple]:
    """The rows of one block of ``spec`` at ``site`` on an input of ``shape``, and its output shape."""
    rows: List[LayerRow] = []
    out = _add_rows(rows, site.graph(spec).ops, shape, f"{name or spec.name}_{site.prefix}")
    return rows, out


def top_rows(spec: NetworkSpec, channels: int, classes: int, name: str) -> List[LayerRow]:
    """The classifier's rows: pool, optional LayerNorm and dropout, dense."""
    c = channels
    rows = [LayerRow(f"{name}_avg_pool", "GlobalAveragePooling2D", (c,))]
    if spec.classifier_norm == "ln":
        rows.append(LayerRow(f"{name}_classifier_ln", "LayerNormalization", (c,), 2 * c, 2 * c))
    if spec.classifier_dropout > 0:
        rows.append(LayerRow(f"{name}_dropout", "Dropout", (c,)))
    rows.append(LayerRow(f"{name}_predictions", "Dense", (classes,), dense_params(c, classes),
                         dense_params(c, classes), c * classes, "dense"))
    return rows


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
    nonlinear_layers = (kl.ReLU, kl.PReLU, kl.LeakyReLU, kl.ELU, ran_layers.HardSwish, ran_layers.BoundedExp,
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
