"""ConvNeXt block kinds (Liu et al. 2022): the residual block and the downsampling layer.

Imported by ``ran_keras.blocks``, so specs, the profiler and the builder
know them like any other kind. The stem (4x4 stride-4 conv with bias, unpadded, then LayerNorm) is
a plain ``conv`` block with ``norm: 'ln'`` and ``padding: 'valid'``, and the head's LayerNorm is the
network's ``classifier_norm: 'ln'``. Unpadded stem and downsampling convs are ConvNeXt's: at input
sizes that are not multiples of 32 they drop the last rows and columns instead of padding.
"""

from __future__ import annotations

from ran_keras import ir
from ran_keras.blocks.base import (ACTIVATION, CHANNELS, EXPANSION, PADDING, BlockKind, Field, block_activation,
                                   block_padding, hidden_channels, positive, register_kind, stride_check)
from ran_keras.errors import SpecError


def _rate_check(value):
    return None if 0 <= value < 1 else "must be in [0, 1)"


@register_kind
class ConvNeXtBlock(BlockKind):
    name = "convnext"
    doc = ("ConvNeXt block: k x k depthwise (bias) -> LayerNorm -> 1x1 to expansion * C (bias) -> act "
           "-> 1x1 to C (bias) -> layer scale -> stochastic depth, plus the identity. Needs input "
           "channels == channels")
    fields = {"channels": CHANNELS,
              "kernel": Field((int,), 7, positive, "depthwise kernel size (k x k)"),
              "expansion": Field(EXPANSION.types, 4, positive, EXPANSION.doc),
              "activation": ACTIVATION,
              "layer_scale": Field((int, float), 1e-6, positive,
                                   "initial layer-scale gamma; null: no layer scale", nullable=True),
              "drop_path": Field((int, float), 0.0, _rate_check,
                                 "stochastic-depth rate of this block while training (0: none)")}

    def finalize(self, values, path):
        values["drop_path"] = float(values["drop_path"])
        if values["layer_scale"] is not None:
            values["layer_scale"] = float(values["layer_scale"])
        return values

    def check_input(self, b, cin, path):
        if cin != b.channels:
            raise SpecError(path, f"a 'convnext' block adds its input, so it needs input channels == "
                                  f"channels; got {cin} -> {b.channels} channels (change width with a "
                                  f"'convnext_down' block first)")

    def expand(self, b, cin, net):
        hidden = hidden_channels(b.expansion, cin, b.channels, pair=False)
        ops = [ir.DepthwiseConv("dw", b.kernel, 1, bias=True, padding=net.padding), ir.LayerNorm("ln"),
               ir.Conv("expand", hidden, 1, bias=True), *ir.act_ops("act", block_activation(b, net)),
               ir.Conv("project", b.channels, 1, bias=True)]
        if b.layer_scale is not None:
            ops.append(ir.LayerScale("layer_scale", b.layer_scale))
        if b.drop_path > 0:
            ops.append(ir.DropPath("drop_path", b.drop_path))
        return ir.BlockGraph(tuple(ops), ())


@register_kind
class ConvNeXtDownsample(BlockKind):
    name = "convnext_down"
    doc = ("ConvNeXt downsampling layer between stages: LayerNorm -> k x k stride-s conv (bias), no activation; "
           "unpadded by default, as in ConvNeXt")
    fields = {"channels": CHANNELS,
              "kernel": Field((int,), 2, positive, "spatial kernel size (k x k)"),
              "stride": Field((int,), 2, stride_check, "spatial stride"),
              "padding": Field(PADDING.types, "valid", PADDING.check, PADDING.doc, nullable=True)}

    def expand(self, b, cin, net):
        conv = ir.Conv("conv", b.channels, b.kernel, b.stride, bias=True, padding=block_padding(b, net))
        return ir.BlockGraph((ir.LayerNorm("ln"), conv))
