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
from ran_keras.errors import FileFormatError, RanError, SpecError
from ran_keras.spec import NetworkSpec, with_activation
from ran_keras.weights import importer


class _Initializers:
    """Kernel initialisers of a spec's ``weight_init``; with a seed, each layer gets its own derived
    seed (reproducible)."""

    def __init__(self, seed: Optional[int], scheme: str = "he_fan_out"):
        self.seed = seed
        self.scheme = scheme
        self.count = 0

    def _next(self) -> Optional[int]:
        if self.seed is None:
            return None
        self.count += 1
        return (self.seed * 1_000_003 + self.count) % (2 ** 31 - 1)

    def conv(self):
        if self.scheme == "trunc_normal_0.02":
            return keras.initializers.RandomNormal(0.0, 0.02, seed=self._next())
        return keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal", seed=self._next())

    def dense(self):
        if self.scheme == "trunc_normal_0.02":
            return keras.initializers.RandomNormal(0.0, 0.02, seed=self._next())
        return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform", seed=self._next())


class BuildContext:
    """What the IR ops need to make their Keras layers (``ran_keras.ir.Op.keras``): the spec's
    network-wide settings, seeded initialisers, and the layers shared inside the current block."""

    def __init__(self, spec: NetworkSpec, seed: Optional[int]):
        self.spec = spec
        self.layers = keras.layers
        self.shared: Dict[str, Any] = {}
        self._init = _Initializers(seed, spec.weight_init)

    def conv_init(self):
        return self._init.conv()

    def dense_init(self):
        return self._init.dense()


def build_model(spec: NetworkSpec, input_shape: Optional[Sequence[Optional[int]]] = None, *,
                classes: int = 1000, include_top: bool = True,
                classifier_activation: Optional[str] = "softmax", activation: Optional[str] = None,
                pooling: Optional[str] = None, input_tensor=None, weights: Optional[str] = None,
                seed: Optional[int] = None, name: Optional[str] = None, features_only: bool = False,
                out_indices: Optional[Sequence[int]] = None):
    """Build ``spec`` as a Keras model, in the style of ``keras.applications``.

    Args:
      input_shape: (H, W, C); default ``(spec.input_size, spec.input_size, spec.input_channels)``.
        H and W may be None, or at least the network's total stride.
      classes / include_top / classifier_activation / pooling: as in keras.applications.
      activation: replace every non-linear activation (not the AFRB PReLUs), e.g. 'relu6'.
      weights: None (random initialisation), the path of a weights file saved from this model, or
        foreign weights to import: a PyTorch ``.pth`` or a TF checkpoint (a path, checked against
        Arm's published files, ``model_ema`` preferred), or a ``ran_keras.weights.importer.Source``
        (``read_source`` with other options). Their layout's numerics (padding, BN epsilon, input
        mean/std) are applied to the spec first; every weight must map (``mapping.MappingError``).
      seed: make the random initialisation reproducible.
      name: model name and layer-name prefix (default ``spec.name``).
      features_only: as timm's: the outputs are the stage outputs ``out_indices`` (default
        ``spec.default_out_indices``), named ``{name}_stage{k}`` (``spec.feature_info``); no head,
        no classifier, and nothing after the last stage asked for is built.
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
    if out_indices is not None and not features_only:
        raise SpecError("out_indices", "only with features_only=True (it picks the stage outputs)")
    picked = spec.check_out_indices(out_indices) if features_only else ()
    source = _foreign_source(weights, spec)
    if source is not None:
        spec = importer.adapt_spec(spec, source)
    elif weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"weights file {str(weights)!r} does not exist (ran_keras ships no "
                                "pretrained weights; pass a file saved from a model of this spec, a .pth "
                                "or a TF checkpoint)")
    name = name or spec.name
    if input_tensor is not None:
        shape = tuple(input_tensor.shape[1:])
    else:
        shape = tuple(input_shape) if input_shape is not None else (
            spec.input_size, spec.input_size, spec.input_channels)
    spec.check_input_shape(shape)

    inputs = input_tensor if input_tensor is not None else keras.Input(shape=shape, name=f"{name}_input")
    ctx = BuildContext(spec, seed)
    wanted = {spec.feature_info[i].block: spec.feature_info[i] for i in picked}
    features: Dict[int, Any] = {}
    x = inputs
    for site in spec.sites:
        ctx.shared = {}
        x = ir.apply_ops(site.graph(spec).ops, x, f"{name}_{site.prefix}", ctx)
        if site.prefix in wanted:
            info = wanted[site.prefix]
            features[info.index] = keras.layers.Activation("linear", name=f"{name}_{info.name}")(x)
            if len(features) == len(wanted):
                break
    if features_only:
        model = keras.Model(inputs, [features[i] for i in picked], name=name)
    else:
        model = keras.Model(inputs, _top(spec, x, name, ctx, classes, include_top, classifier_activation, pooling),
                            name=name)
    if source is not None:
        importer.load_source(model, source, include_top=include_top and not features_only)
    elif weights is not None:
        try:
            model.load_weights(weights)
        except (ValueError, OSError) as err:
            raise RanError(f"could not load weights {str(weights)!r} into {name}: {err}") from err
    return model


def _foreign_source(weights, spec: NetworkSpec) -> Optional[importer.Source]:
    """The foreign weights to import (a read ``Source``), or None for none / a Keras weights file."""
    if isinstance(weights, importer.Source):
        return weights
    if weights is not None and importer.is_foreign_weights(weights):
        return importer.read_source(weights, model=spec.name)
    return None


def _top(spec: NetworkSpec, x, name: str, ctx: BuildContext, classes: int, include_top: bool,
         classifier_activation: Optional[str], pooling: Optional[str]):
    """The classifier (pool, optional LayerNorm and dropout, dense) or the pooling of a headless model."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
        if spec.classifier_norm == "ln":
            x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_classifier_ln")(x)
        if spec.classifier_dropout > 0:
            x = keras.layers.Dropout(spec.classifier_dropout, name=f"{name}_dropout")(x)
        return keras.layers.Dense(classes, activation=classifier_activation, kernel_initializer=ctx.dense_init(),
                                  name=f"{name}_predictions")(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=f"{name}_max_pool")(x)
    return x


def load_model(path, compile: bool = False):
    """Load a model saved from ran_keras (``.keras`` or ``.h5``) with its custom layers."""
    from ran_keras.layers import CUSTOM_OBJECTS
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    _check_model_file(path)
    try:
        if path.suffix == ".keras":
            model = _load_keras_archive(path, compile, CUSTOM_OBJECTS)
            if model is not None:
                return model
        return keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=compile)
    except PermissionError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OSError, zipfile.BadZipFile) as err:
        detail = str(err).split(". Full object config")[0].splitlines()[0][:300] if str(err) else type(err).__name__
        raise FileFormatError(path, f"Keras could not rebuild the model from it ({detail})",
                              SAVED_MODEL_KINDS) from None


#: what load_model reads, for error messages
SAVED_MODEL_KINDS = ("a functional or Sequential tf_keras model saved with model.save() (as ran train and "
                     "ran weights import write them; subclassed models cannot be rebuilt from a file)")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_model_file(path: Path) -> None:
    """A .keras file must be a zip archive and a .h5 file an HDF5 file (checked before Keras reads them)."""
    if path.is_dir():
        raise FileFormatError(path, "a folder (a TensorFlow SavedModel?)", ".keras or .h5 model file")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise FileFormatError(path, f"not a zip archive ({path.stat().st_size:,} bytes: truncated, damaged or "
                                    "another format)", "a .keras model archive written by model.save()")
    if path.suffix.lower() == ".h5":
        with open(path, "rb") as f:
            head = f.read(8)
        if head != _HDF5_SIGNATURE:
            raise FileFormatError(path, "not an HDF5 file (no HDF5 signature)", "a Keras .h5 model written by "
                                        "model.save()")


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
