"""ran_keras's custom Keras layers, one per module, all registered as Keras serializables under
the package name ``ran_keras`` (so any Keras loader rebuilds them once ran_keras is imported)."""

from ran_keras.layers.border_bias import BorderBias
from ran_keras.layers.bounded_exp import BoundedExp
from ran_keras.layers.channel_layer_norm import ChannelLayerNorm
from ran_keras.layers.edge_pad import EdgePad
from ran_keras.layers.hard_swish import HardSwish
from ran_keras.layers.layer_scale import LayerScale
from ran_keras.layers.prelu import ClipAlpha, SharedAlphaPReLU
from ran_keras.layers.rsqrt import Rsqrt

#: every custom class, under the name Keras registers it with ('ran_keras>Name')
CUSTOM_OBJECTS = {f"ran_keras>{cls.__name__}": cls
                  for cls in (SharedAlphaPReLU, ClipAlpha, HardSwish, LayerScale, BorderBias, EdgePad, BoundedExp,
                               ChannelLayerNorm, Rsqrt)}

__all__ = ["BorderBias", "BoundedExp", "ChannelLayerNorm", "CUSTOM_OBJECTS", "EdgePad", "ClipAlpha", "HardSwish", "LayerScale",
           "Rsqrt",
           "SharedAlphaPReLU"]
