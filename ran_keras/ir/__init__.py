"""The layer-level IR that block kinds expand into (``ops``: primitive ops and their rules;
``graph``: a block's residual structure; ``costs``: the cost formulas).

The analytic profiler (``ran_keras.analysis.profiler``), NN-Mass (``ran_keras.analysis.nnmass``),
the scaling sweep and the Keras builder (``ran_keras.builder``) all read this IR, so params, MACs
and the built model cannot drift apart.
"""

from ran_keras.ir.costs import same_padding, same_size, symmetric_pad, symmetric_size, valid_size
from ran_keras.ir.graph import BlockGraph
from ran_keras.ir.ops import (MERGES, Act, BatchNorm, Conv, Cost, DepthwiseConv, DropPath, LayerNorm, LayerScale, Leaf,
                              MaxPool, Merge, Op, PADDINGS, Pad, Parallel, SharedPReLU, ZeroPad, act_ops, apply_ops, layer_name,
                              trace, trace_ops)

__all__ = ["Act", "BatchNorm", "BlockGraph", "Conv", "Cost", "DepthwiseConv", "DropPath", "LayerNorm", "LayerScale",
           "Leaf", "MERGES", "MaxPool", "Merge", "Op", "PADDINGS", "Pad", "Parallel", "SharedPReLU", "ZeroPad", "act_ops", "apply_ops",
           "layer_name", "same_padding", "same_size", "symmetric_pad", "symmetric_size", "trace", "trace_ops",
           "valid_size"]
