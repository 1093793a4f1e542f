"""Quantisation-aware training with tfmot (tensorflow-model-optimization) on ran_keras models.

* ``configs``: the QuantizeConfig of every custom layer and of every registry activation tfmot
  does not know; a new layer adds one line to ``LAYER_CONFIGS``.
* ``split``: rebuilds a model with each shared-alpha PReLU call as its own layer (tfmot wraps
  layers, not calls).
* ``qat``: ``quantize`` (float model -> fake-quantised model), ``to_int8`` (int8 TFLite with no
  representative data), ``float_weights`` (by layer name, through the wrappers) and
  ``QATTransform`` (the trainer's ModelTransform behind ``ran train --qat``).
"""
