"""Rebuild a functional model in layers tfmot can wrap: each shared-alpha PReLU call as its own
layer, each BatchNorm that follows no convolution as a 1x1 depthwise convolution, and each
LayerNorm as a chain of one-op layers.

tfmot wraps layers, and a ``SharedAlphaPReLU`` is one layer called at two places of an AFRB on
tensors of different widths. Here each call becomes a ``LeakyReLU`` with the slope that call uses
(``alpha`` at ``<name>``, ``1 - alpha`` at ``<name>_complement``, ``_2`` added for an afrb3's
second pair): the same function, one TFLite LEAKY_RELU each (a lookup table on Ethos-U). The alpha is frozen at its current value, which is
what QAT fine-tuning of a searched (or trained) network wants. tfmot folds a BatchNorm only into
the convolution before it; one elsewhere (an AFRB's pre-BN) becomes the per-channel affine map it
computes at inference, ``x * gamma / sqrt(var + eps) + (beta - mean * that)``, as a 1x1
DepthwiseConv2D of the same name (one DEPTHWISE_CONV_2D; the statistics stay frozen). A LayerNorm
over channels (Keras' or ``ChannelLayerNorm``) becomes the ChannelLayerNorm computation in one-op
layers, each of which tfmot fake-quantises: mean and variance as frozen 1x1 convolutions to one
channel with weights 1/C (epsilon as the variance's bias), Subtract, Multiply, ``Rsqrt``, Multiply,
and gamma/beta as a trainable 1x1 DepthwiseConv2D of the LayerNorm's name; a (N, C) input is
reshaped to (N, 1, 1, C) around it. Every other layer is shared with the original model, so
nothing is copied.
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
    gamma, beta, mean, var = _bn_parts(layer)
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


def _channel_layer_norm(layer) -> bool:
    from ran_keras.layers import ChannelLayerNorm
    if isinstance(layer, ChannelLayerNorm):
        return True
    if not isinstance(layer, keras.layers.LayerNormalization) or not (layer.center and layer.scale):
        return False
    rank = len(layer.input_shape)
    return [a % rank for a in layer.axis] == [rank - 1] and rank in (2, 4)


def layer_norm_chain(layer) -> Callable:
    """``x -> LayerNorm(x)`` for ``layer`` (built, over the last axis) in one-op layers."""
    from ran_keras.layers import Rsqrt
    name, rank = layer.name, len(layer.input_shape)
    c = int(layer.input_shape[-1])
    mean = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name=f"{name}_mean")
    var = keras.layers.Conv2D(1, 1, trainable=False, name=f"{name}_var")
    affine = keras.layers.DepthwiseConv2D(1, name=name)
    steps = dict(centre=keras.layers.Subtract(name=f"{name}_centre"), square=keras.layers.Multiply(name=f"{name}_square"),
                 rsqrt=Rsqrt(layer.epsilon, name=f"{name}_rsqrt"), norm=keras.layers.Multiply(name=f"{name}_norm"))
    to_map = keras.layers.Reshape((1, 1, c), name=f"{name}_to_map") if rank == 2 else None
    to_vec = keras.layers.Reshape((c,), name=f"{name}_to_vector") if rank == 2 else None

    def call(x, **_):
        x = to_map(x) if to_map else x
        centred = steps["centre"]([x, mean(x)])
        scale = steps["rsqrt"](var(steps["square"]([centred, centred])))
        y = affine(steps["norm"]([centred, scale]))
        for conv, weights in ((mean, [np.full((1, 1, c, 1), 1.0 / c, np.float32)]),
                              (var, [np.full((1, 1, c, 1), 1.0 / c, np.float32),
                                     np.full((1,), layer.epsilon, np.float32)]),
                              (affine, [np.asarray(layer.gamma).reshape(1, 1, c, 1), np.asarray(layer.beta)])):
            conv.set_weights(weights)
        return to_vec(y) if to_vec else y

    return call


def split_for_tfmot(model):
    """``model`` with every SharedAlphaPReLU call replaced by its own LeakyReLU, every standalone
    BatchNorm by a 1x1 DepthwiseConv2D and every LayerNorm by one-op layers (``model`` itself when
    none occurs)."""
    from ran_keras.layers import SharedAlphaPReLU
    if not any(isinstance(layer, SharedAlphaPReLU) or _standalone_bn(layer, node) or _channel_layer_norm(layer)
               for layer in model.layers for node in layer._inbound_nodes if node in _nodes(model)):
        return model

    seen: Dict[str, int] = {}

    def substitute(layer, node):
        if _standalone_bn(layer, node):
            return bn_as_depthwise(layer)
        if _channel_layer_norm(layer):
            return layer_norm_chain(layer)
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
