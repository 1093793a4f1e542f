"""Float model -> fake-quantised (QAT) model -> int8 TFLite without representative data.

``quantize`` splits the shared-alpha PReLUs (``split``), annotates every layer (our
``configs`` where tfmot's default 8-bit scheme has none) and applies tfmot. A layer no config
covers fails here, by name, before any training. ``to_int8`` converts the QAT model with the
ranges it learnt: int8 input and output, and the same float-tensor check as ``ran export``.
``float_weights`` puts a QAT model's float weights into a float model by layer name (through
the wrappers), never by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import tensorflow_model_optimization as tfmot

from ran_keras.backend import keras, tf
from ran_keras.quant import configs
from ran_keras.quant.split import split_for_tfmot
from ran_keras.train.transforms import ModelTransform

_qk = tfmot.quantization.keras
#: tfmot's name for the wrapper of layer X
WRAPPER_PREFIX = "quant_"


class QuantizationError(ValueError):
    """A model tfmot cannot quantise, with the layers at fault."""


def _annotate(layer):
    if isinstance(layer, keras.layers.InputLayer):
        return layer
    config = configs.config_for(layer)
    return _qk.quantize_annotate_layer(layer, config) if config is not None else _qk.quantize_annotate_layer(layer)


def quantize(model):
    """The QAT form of a functional tf_keras model (fake quantisation in training and inference)."""
    model = split_for_tfmot(model)
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise QuantizationError(f"{model.name}: nested models cannot be quantised by tfmot: {', '.join(nested)}")
    unknown = [f"{layer.name} ({type(layer).__name__})" for layer in model.layers
               if configs.config_for(layer) is None and not type(layer).__module__.startswith("tf_keras.")]
    if unknown:
        raise QuantizationError(f"{model.name}: no QuantizeConfig for the custom layer(s) {', '.join(unknown)}; "
                                "add one to LAYER_CONFIGS in ran_keras/quant/configs.py")
    annotated = keras.models.clone_model(model, clone_function=_annotate)
    try:
        with _qk.quantize_scope(configs.scope()):
            return _qk.quantize_apply(annotated)
    except (RuntimeError, ValueError) as err:
        raise QuantizationError(f"tfmot cannot quantise {model.name}: {err} (add a QuantizeConfig for the layer in "
                                "ran_keras/quant/configs.py)") from err


def to_int8(qat_model) -> bytes:
    """Int8 TFLite (int8 input and output) from a QAT model's learnt ranges; no representative data.

    Raises FloatTensorError (the ``ran export`` check) when any tensor stays float.
    """
    from ran_keras.export.errors import ExportError
    from ran_keras.export.flatbuffer import check_integer_only, inspect_tflite
    from ran_keras.export.litert import quiet
    from ran_keras.export.tflite import input_shape_of
    shape = input_shape_of(qat_model)
    fn = tf.function(lambda x: qat_model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1,) + shape, tf.float32, name="input"))
    with quiet():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # no supported_ops=[TFLITE_BUILTINS_INT8]: with it TF asks for a representative dataset even for
    # QAT models; a float op left behind is caught by check_integer_only instead
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        with quiet():
            data = bytes(converter.convert())
    except Exception as err:
        raise ExportError(f"int8 conversion of the QAT model {qat_model.name} failed: {str(err).strip()[:2000]}") from err
    check_integer_only(inspect_tflite(data), f"the QAT int8 export of {qat_model.name}")
    return data


def _source_layer(qat_model, name: str):
    """``(layer, {variable name: variable})`` for the layer called ``name`` inside ``qat_model``
    (unwrapped; the variables are the wrapper's, which hold the float ones), or (None, {})."""
    for candidate in (WRAPPER_PREFIX + name, name):
        try:
            layer = qat_model.get_layer(candidate)
        except ValueError:
            continue
        return getattr(layer, "layer", layer), {_short(v): v for v in layer.weights}
    return None, {}


def _short(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def float_weights(target, qat_model) -> None:
    """Copy every weight of ``target`` (a float model of the same spec) from ``qat_model``, matching
    layers by name and variables by name; a SharedAlphaPReLU takes the alpha of its split
    LeakyReLU, a standalone BatchNorm or a LayerNorm the affine map of its depthwise stand-in. Raises
    QuantizationError naming what has no counterpart."""
    from ran_keras.layers import SharedAlphaPReLU
    missing = []
    for layer in target.layers:
        if not layer.weights:
            continue
        source, by_name = _source_layer(qat_model, layer.name)
        if isinstance(layer, SharedAlphaPReLU) and isinstance(source, keras.layers.LeakyReLU):
            layer.alpha.assign(float(source.alpha))
            continue
        if isinstance(layer, keras.layers.BatchNormalization) and isinstance(source, keras.layers.DepthwiseConv2D):
            _bn_from_affine(layer, by_name["depthwise_kernel"], by_name["bias"])
            continue
        if hasattr(layer, "gamma") and hasattr(layer, "beta") and isinstance(source, keras.layers.DepthwiseConv2D):
            layer.gamma.assign(np.asarray(by_name["depthwise_kernel"]).reshape(-1))   # a LayerNorm's affine part
            layer.beta.assign(by_name["bias"])
            continue
        for variable in layer.weights:
            if _short(variable) not in by_name:
                missing.append(f"{layer.name}/{_short(variable)}")
                continue
            variable.assign(by_name[_short(variable)])
    if missing:
        raise QuantizationError(f"no counterpart in {qat_model.name} for: {', '.join(missing[:10])}"
                                + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))


def _bn_from_affine(bn, kernel, bias) -> None:
    """Set ``bn`` to ``x * kernel + bias`` per channel (mean 0, variance 1 - eps)."""
    bias = np.asarray(bias)
    values = {"gamma": np.asarray(kernel).reshape(-1), "beta": bias, "moving_mean": np.zeros_like(bias),
              "moving_variance": np.full_like(bias, 1.0 - bn.epsilon)}
    for variable in bn.weights:
        variable.assign(values[_short(variable)])


class QATTransform(ModelTransform):
    """``ran train --qat``: train the fake-quantised model; afterwards write ``model_int8.tflite``
    and ``model_int8.json`` (the float-tensor check passed; the Keras-vs-int8 comparison on the
    calibration photos, normalised with the spec's mean/std, as ``ran export`` does)."""

    FILE = "model_int8.tflite"

    def __init__(self, init_model: Optional[str] = None, spec=None, samples: int = 8):
        super().__init__("qat")
        self.init_model, self.spec, self.samples = init_model, spec, samples

    def apply(self, model):
        if self.init_model:
            from ran_keras.builder import load_model
            copy_weights_by_name(model, load_model(self.init_model))
        return quantize(model)

    def export(self, model, model_dir: Path) -> None:
        import json
        from ran_keras import fileio
        from ran_keras.export import calibration
        from ran_keras.export.flatbuffer import inspect_tflite
        from ran_keras.export.tflite import compare_with_keras, input_shape_of
        data = to_int8(model)
        h, _, c = input_shape_of(model)
        images, source = calibration.calibration_set("photos", self.samples, h, spec=self.spec, channels=c)
        report: Dict[str, Any] = {"tflite": inspect_tflite(data).to_dict(), "integer_only": True,
                                  "representative_dataset": None, "compared_on": source,
                                  "agreement": compare_with_keras(model, data, images)}
        fileio.write_bytes(Path(model_dir) / self.FILE, data)
        fileio.write_text(Path(model_dir) / "model_int8.json", json.dumps(report, indent=1) + "\n")


def copy_weights_by_name(target, source) -> None:
    """Copy a float model's weights into ``target`` layer by layer and variable by variable, by
    name; raises QuantizationError naming any weight of ``target`` that ``source`` lacks."""
    missing = []
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            by_name = {_short(v): v for v in source.get_layer(layer.name).weights}
        except ValueError:
            by_name = {}
        for variable in layer.weights:
            if _short(variable) not in by_name or tuple(by_name[_short(variable)].shape) != tuple(variable.shape):
                missing.append(f"{layer.name}/{_short(variable)}")
            else:
                variable.assign(by_name[_short(variable)])
    if missing:
        raise QuantizationError(f"{source.name} has no weight of the same name and shape for: {', '.join(missing[:10])}"
                                + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
