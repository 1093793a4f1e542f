"""Turns a ``NetworkSpec`` into a tf_keras functional model (the one builder of the project).

Every layer is named ``{model}_{section}_block{j}_{op}`` (e.g. ``ran_e_c_stage3_block1_dw``), so
the profiler, the rewriter and saved checkpoints can refer to layers by name. No nested
sub-models and no preprocessing layers are used, so tfmot can quantise the result.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ran_keras import ir
from ran_keras.backend import keras
from ran_keras.errors import RanError
from ran_keras.layers import LayerScale, SharedAlphaPReLU, activation_layer
from ran_keras.spec import NetworkSpec, with_activation


class _Initializers:
    """Kernel initialisers; with a seed, each layer gets its own derived seed (reproducible)."""

    def __init__(self, seed: Optional[int]):
        self.seed = seed
        self.count = 0

    def _next(self) -> Optional[int]:
        if self.seed is None:
            return None
        self.count += 1
        return (self.seed * 1_000_003 + self.count) % (2 ** 31 - 1)

    def conv(self):
        return keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal", seed=self._next())

    def dense(self):
        return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform", seed=self._next())


def _apply(ops, x, prefix: str, spec: NetworkSpec, init: _Initializers, shared: Dict[str, Any]):
    for op in ops:
        name = ir.layer_name(prefix, op.name)
        if isinstance(op, ir.Conv):
            x = keras.layers.Conv2D(op.filters, op.kernel, strides=op.stride, padding="same",
                                    use_bias=op.bias, kernel_initializer=init.conv(), name=name)(x)
        elif isinstance(op, ir.DepthwiseConv):
            x = keras.layers.DepthwiseConv2D(op.kernel, strides=op.stride, padding=op.padding, use_bias=op.bias,
                                             depthwise_initializer=init.conv(), name=name)(x)
        elif isinstance(op, ir.BatchNorm):
            x = keras.layers.BatchNormalization(momentum=spec.bn_momentum, epsilon=spec.bn_epsilon,
                                                name=name)(x)
        elif isinstance(op, ir.LayerNorm):
            x = keras.layers.LayerNormalization(epsilon=1e-6, name=name)(x)
        elif isinstance(op, ir.Act):
            x = activation_layer(op.fn, name)(x)
        elif isinstance(op, ir.SharedPReLU):
            if name not in shared:
                shared[name] = SharedAlphaPReLU(op.alpha_init, op.alpha_clip, name=name)
            x = shared[name](x, complement=op.complement)
        elif isinstance(op, ir.MaxPool):
            x = keras.layers.MaxPooling2D(op.kernel, op.stride, padding="same", name=name)(x)
        elif isinstance(op, ir.LayerScale):
            x = LayerScale(op.init, name=name)(x)
        elif isinstance(op, ir.DropPath):
            # one keep/drop decision per sample: stochastic depth; Dropout is the identity at inference
            x = keras.layers.Dropout(op.rate, noise_shape=(None, 1, 1, 1), name=name)(x)
        elif isinstance(op, ir.ZeroPad):
            pads = tuple(ir.same_padding(d, op.kernel, op.stride) for d in x.shape[1:3])
            x = keras.layers.ZeroPadding2D(pads, name=name)(x)
        else:
            raise TypeError(f"the builder has no Keras layer for IR op {op!r}")
    return x


def build_model(spec: NetworkSpec, input_shape: Optional[Sequence[Optional[int]]] = None, *,
                classes: int = 1000, include_top: bool = True,
                classifier_activation: Optional[str] = "softmax", activation: Optional[str] = None,
                pooling: Optional[str] = None, input_tensor=None, weights: Optional[str] = None,
                seed: Optional[int] = None, name: Optional[str] = None):
    """Build ``spec`` as a Keras model, in the style of ``keras.applications``.

    Args:
      input_shape: (H, W, C); default ``(spec.input_size, spec.input_size, spec.input_channels)``.
        H and W may be None, or at least the network's total stride.
      classes / include_top / classifier_activation / pooling: as in keras.applications.
      activation: replace every non-linear activation (not the AFRB PReLUs), e.g. 'relu6'.
      weights: None (random initialisation) or the path of a weights file saved from this model.
      seed: make the random initialisation reproducible.
      name: model name and layer-name prefix (default ``spec.name``).
    """
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"build_model takes a NetworkSpec, got {type(spec).__name__}; "
                        "use ran_keras.create_model for names and JSON files")
    if activation is not None:
        spec = with_activation(spec, activation)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive integer, got {classes!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"weights file {str(weights)!r} does not exist (ran_keras ships no "
                                "pretrained weights; pass a file saved from a model of this spec)")
    name = name or spec.name
    if input_tensor is not None:
        shape = tuple(input_tensor.shape[1:])
    else:
        shape = tuple(input_shape) if input_shape is not None else (
            spec.input_size, spec.input_size, spec.input_channels)
    spec.check_input_shape(shape)

    inputs = input_tensor if input_tensor is not None else keras.Input(shape=shape, name=f"{name}_input")
    init = _Initializers(seed)
    x = inputs
    for site in spec.sites:
        graph = site.graph(spec)
        prefix = f"{name}_{site.prefix}"
        shared: Dict[str, Any] = {}
        y = _apply(graph.main, x, prefix, spec, init, shared)
        if graph.shortcut is not None:
            skip = _apply(graph.shortcut, x, prefix, spec, init, shared)
            y = keras.layers.Add(name=ir.layer_name(prefix, "add"))([y, skip])
        x = _apply(graph.post, y, prefix, spec, init, shared)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
        if spec.classifier_norm == "ln":
            x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_classifier_ln")(x)
        if spec.classifier_dropout > 0:
            x = keras.layers.Dropout(spec.classifier_dropout, name=f"{name}_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, kernel_initializer=init.dense(),
                               name=f"{name}_predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name=f"{name}_max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        try:
            model.load_weights(weights)
        except (ValueError, OSError) as err:
            raise RanError(f"could not load weights {str(weights)!r} into {name}: {err}") from err
    return model


def load_model(path, compile: bool = False):
    """Load a model saved from ran_keras (``.keras`` or ``.h5``) with its custom layers."""
    from ran_keras.layers import CUSTOM_OBJECTS
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        model = _load_keras_archive(path, compile, CUSTOM_OBJECTS)
        if model is not None:
            return model
    return keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=compile)


def _load_keras_archive(path: Path, compile: bool, custom_objects):
    """A ``.keras`` archive, its weights unpacked to a temporary file first (None: not a plain archive).

    tf_keras reads the weights straight out of the zip, and every backward seek of h5py re-reads the
    archive from its start: loading a 350 MB ConvNeXt-B file that way takes minutes, this way seconds.
    """
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {"config.json", "model.weights.h5"} <= names <= {"config.json", "metadata.json", "model.weights.h5"}:
            return None
        config = json.loads(archive.read("config.json"))
        if not compile:
            config["compile_config"] = None
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.weights.h5"
            with archive.open("model.weights.h5") as src, open(weights, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            model = keras.saving.deserialize_keras_object(config, custom_objects=custom_objects)
            model.load_weights(weights)
    return model


__all__ = ["build_model", "load_model"]
