"""Swap every spatial LayerNormalization of a model for ``ChannelLayerNorm`` (NPU-friendly, same
function), sharing every other layer, so the int8 export runs wholly on Ethos-U.

The new model shares all other layers (and so their weights) with the original; each replaced
layer gets its gamma and beta read from the attributes of the same-named original layer.
"""

from __future__ import annotations

from typing import List, Tuple

from ran_keras.backend import keras
from ran_keras.layers import ChannelLayerNorm


def _is_spatial_channel_ln(layer) -> bool:
    if not isinstance(layer, keras.layers.LayerNormalization):
        return False
    shape = layer.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4:
        return False
    axis = [a % 4 for a in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis])]
    return axis == [3] and layer.center and layer.scale


def spatial_layer_norms(model) -> List[str]:
    """Names of the layers ``npu_layer_norm`` replaces (LayerNorm over channels of 4-D maps)."""
    return [layer.name for layer in model.layers if _is_spatial_channel_ln(layer)]


def npu_layer_norm(model) -> Tuple[object, List[str]]:
    """``(new_model, replaced_layer_names)``; the model itself when it has no spatial LayerNorm."""
    targets = set(spatial_layer_norms(model))
    if not targets:
        return model, []

    def clone(layer):
        if layer.name not in targets:
            return layer
        return ChannelLayerNorm(epsilon=layer.epsilon, name=layer.name, dtype=layer.dtype)

    new = keras.models.clone_model(model, clone_function=clone)
    for name in targets:
        old, fresh = model.get_layer(name), new.get_layer(name)
        fresh.gamma.assign(old.gamma)
        fresh.beta.assign(old.beta)
    return new, sorted(targets)
