"""QuantizeConfigs for the layers tfmot's default 8-bit scheme does not know.

Every entry is one TFLite operator (or a pattern the converter fuses into one: HARD_SWISH, PRELU,
EXP, MIRROR_PAD), so fake-quantising the layer's output (and its constant weights, where named)
is all the int8 converter needs. To quantise a new custom layer, add its class name here.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import tensorflow_model_optimization as tfmot

from ran_keras.backend import keras

_qk = tfmot.quantization.keras


class OutputQuantizeConfig(_qk.QuantizeConfig):
    """Fake-quantise the named weight attributes (8 bit, symmetric, per tensor) and, with
    ``output``, the layer's output (8 bit, moving-average range). ``output=False`` suits ops whose
    output keeps the input's scale (padding)."""

    def __init__(self, weights: Sequence[str] = (), output: bool = True):
        self.weights, self.output = list(weights), bool(output)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, name), _qk.quantizers.LastValueQuantizer(
            num_bits=8, per_axis=False, symmetric=True, narrow_range=True)) for name in self.weights]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        for name, weight in zip(self.weights, quantize_weights):
            setattr(layer, name, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if not self.output:
            return []
        return [_qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {"weights": self.weights, "output": self.output}


#: class name -> the config of that layer class (ran_keras's custom layers and Keras layers that
#: registry activations make but tfmot's default scheme refuses)
LAYER_CONFIGS: Dict[str, OutputQuantizeConfig] = {
    "HardSwish": OutputQuantizeConfig(),                       # -> HARD_SWISH
    "LayerScale": OutputQuantizeConfig(),                      # -> MUL by a constant
    "BorderBias": OutputQuantizeConfig(),                      # -> ADD of a constant
    "EdgePad": OutputQuantizeConfig(output=False),             # -> MIRROR_PAD, same scale as its input
    "PReLU": OutputQuantizeConfig(),                           # registry 'prelu' -> PRELU
    "Rsqrt": OutputQuantizeConfig(),                           # -> RSQRT
    "Subtract": OutputQuantizeConfig(),                        # -> SUB (LayerNorm's centring)
    "Multiply": OutputQuantizeConfig(),                        # -> MUL
}

#: Keras activation functions tfmot's default registry refuses in an Activation layer
ACTIVATION_CONFIGS: Dict[str, OutputQuantizeConfig] = {
    "exponential": OutputQuantizeConfig(),                     # registry 'exp' -> EXP
}

#: layers ``quantize`` replaces by one-op layers before tfmot sees them (``ran_keras.quant.split``);
#: a standalone BatchNormalization is replaced too
SPLIT_LAYERS = ("SharedAlphaPReLU", "LayerNormalization", "ChannelLayerNorm")


def config_for(layer) -> Optional[OutputQuantizeConfig]:
    """Our config for ``layer``, or None where tfmot's default scheme is meant to handle it."""
    if isinstance(layer, keras.layers.Activation):
        return ACTIVATION_CONFIGS.get(getattr(layer.activation, "__name__", ""))
    return LAYER_CONFIGS.get(type(layer).__name__)


def scope() -> Dict[str, object]:
    """Custom objects tfmot needs to clone and reload quantised models."""
    from ran_keras.layers import CUSTOM_OBJECTS
    objects = {"OutputQuantizeConfig": OutputQuantizeConfig}
    objects.update({key.split(">", 1)[1]: cls for key, cls in CUSTOM_OBJECTS.items()})
    return objects
