"""Rebuild a functional model in layers tfmot can wrap: each shared-alpha PReLU call as its own
layer, and each BatchNorm that follows no convolution as a 1x1 depthwise convolution.

tfmot wraps layers, and a ``SharedAlphaPReLU`` is one layer called at two places of an AFRB on
tensors of different widths. Here each call becomes a ``LeakyReLU`` with the slope that call uses
(``alpha`` at ``<name>``, ``1 - alpha`` at ``<name>_complement``, ``_2`` added to an afrb3's second pair): the same function, one TFLite
LEAKY_RELU each (a lookup table on Ethos-U). The alpha is frozen at its current value, which is
what QAT fine-tuning of a searched (or trained) network wants. tfmot folds a BatchNorm only into
the convolution before it; one elsewhere (an AFRB's pre-BN) becomes the per-channel affine map it
computes at inference, ``x * gamma / sqrt(var + eps) + (beta - mean * that)``, as a 1x1
DepthwiseConv2D of the same name (one DEPTHWISE_CONV_2D; the statistics stay frozen). Every other
layer is shared with the original model, so nothing is copied.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from ran_keras.backend import keras, tf


class _Always(list):
    """A tensor_dict entry for ``Node.map_arguments`` that hands out its tensor every time."""

    def pop(self, *args):
        return self[0]


def replay(model, substitute: Callable[[object, object], Callable]):
    """A new functional model with the graph of ``model``; ``substitute(layer, node)`` returns
    what to call at each node (the layer itself to share it)."""
    if not getattr(model, "_is_graph_network", False):
        raise TypeError(f"{model.name} is not a functional tf_keras model; quantisation rebuilds functional models")
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=layer.name)
              for t, layer in zip(model.inputs, model._input_layers)]
    tensors: Dict[str, _Always] = {str(id(t)): _Always([n]) for t, n in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = node.map_arguments(tensors)
            outputs = substitute(node.layer, node)(*args, **kwargs)
            for key, out in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensors[key] = _Always([out])
    outputs = [tensors[str(id(t))][0] for t in model.outputs]
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)


_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _standalone_bn(layer, node) -> bool:
    if not isinstance(layer, keras.layers.BatchNormalization):
        return False
    producers = [n.layer for n in node.parent_nodes]
    return not (len(producers) == 1 and isinstance(producers[0], _CONVS))


def bn_as_depthwise(layer):
    """A built 1x1 DepthwiseConv2D computing ``layer`` (a BatchNormalization) in inference mode."""
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in layer.get_weights()) if layer.scale and layer.center \
        else _bn_parts(layer)
    scale = gamma / np.sqrt(var + layer.epsilon)
    dw = keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
    dw.build(layer.input_shape)
    dw.set_weights([scale.reshape(1, 1, -1, 1).astype(np.float32), (beta - mean * scale).astype(np.float32)])
    return dw


def _bn_parts(layer):
    c = int(layer.moving_mean.shape[0])
    gamma = np.asarray(layer.gamma, np.float64) if layer.scale else np.ones(c)
    beta = np.asarray(layer.beta, np.float64) if layer.center else np.zeros(c)
    return gamma, beta, np.asarray(layer.moving_mean, np.float64), np.asarray(layer.moving_variance, np.float64)


def split_for_tfmot(model):
    """``model`` with every SharedAlphaPReLU call replaced by its own LeakyReLU and every
    standalone BatchNorm by a 1x1 DepthwiseConv2D (``model`` itself when neither occurs)."""
    from ran_keras.layers import SharedAlphaPReLU
    if not any(isinstance(layer, SharedAlphaPReLU) or _standalone_bn(layer, node)
               for layer in model.layers for node in layer._inbound_nodes if node in _nodes(model)):
        return model

    seen: Dict[str, int] = {}

    def substitute(layer, node):
        if _standalone_bn(layer, node):
            return bn_as_depthwise(layer)
        if not isinstance(layer, SharedAlphaPReLU):
            return layer
        alpha = float(layer.alpha.numpy())
        complement = bool(node.call_kwargs.get("complement", False))
        slope, name = (1.0 - alpha, f"{layer.name}_complement") if complement else (alpha, layer.name)
        seen[name] = seen.get(name, 0) + 1           # an afrb3 calls each slope twice
        leaky = keras.layers.LeakyReLU(slope, name=name if seen[name] == 1 else f"{name}_{seen[name]}")
        return lambda x, **_: leaky(x)

    return replay(model, substitute)


def _nodes(model):
    return {node for nodes in model._nodes_by_depth.values() for node in nodes}
