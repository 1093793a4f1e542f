"""Plain block kinds: a convolution, a depthwise convolution, max pooling (stems, heads, RepVGG)."""

from __future__ import annotations

from ran_keras import ir
from ran_keras.blocks.base import (ACTIVATION, CHANNELS, KERNEL, PADDING, STRIDE, BlockKind, Field, block_activation,
                                   block_padding, norm_check, register_kind, stride_check)


@register_kind
class ConvBlock(BlockKind):
    name = "conv"
    doc = "k x k convolution -> optional BN -> activation (stems, heads, RepVGG deploy blocks)"
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "activation": ACTIVATION,
              "norm": Field((str,), "bn", norm_check, "'bn', 'ln' or null", nullable=True),
              "bias": Field((bool,), None, None, "null: bias only when norm is null", nullable=True),
              "padding": PADDING}

    def finalize(self, values, path):
        if values["bias"] is None:
            values["bias"] = values["norm"] is None
        return values

    def expand(self, b, cin, net):
        ops = [ir.Conv("conv", b.channels, b.kernel, b.stride, b.bias, block_padding(b, net))]
        if b.norm == "bn":
            ops.append(ir.BatchNorm("bn"))
        elif b.norm == "ln":
            ops.append(ir.LayerNorm("ln"))
        ops += ir.act_ops("act", block_activation(b, net))
        return ir.BlockGraph(tuple(ops))


@register_kind
class DepthwiseBlock(BlockKind):
    name = "dw"
    doc = "k x k depthwise convolution -> BN -> activation (the RAN-e top's 7x7 layer)"
    fields = {"kernel": KERNEL, "stride": STRIDE, "activation": ACTIVATION,
              "norm": Field((str,), "bn", norm_check, "'bn', 'ln' or null", nullable=True),
              "bias": Field((bool,), None, None, "null: bias only when norm is null", nullable=True),
              "padding": PADDING}
    finalize = ConvBlock.finalize

    def out_channels(self, b, cin):
        return cin

    def expand(self, b, cin, net):
        ops = [ir.DepthwiseConv("dw", b.kernel, b.stride, b.bias, block_padding(b, net))]
        if b.norm == "bn":
            ops.append(ir.BatchNorm("bn"))
        elif b.norm == "ln":
            ops.append(ir.LayerNorm("ln"))
        ops += ir.act_ops("act", block_activation(b, net))
        return ir.BlockGraph(tuple(ops))


@register_kind
class MaxPoolBlock(BlockKind):
    name = "maxpool"
    doc = "k x k max pooling (the ResNet stem)"
    fields = {"kernel": KERNEL, "stride": Field((int,), 2, stride_check), "padding": PADDING,
              "fill": Field((str,), "edge", lambda v: None if v in ("edge", "zeros") else "must be 'edge' or 'zeros'",
                            "how 'symmetric' padding stands in for PyTorch's -inf: 'edge' (mirrored border values, "
                            "exact for any input) or 'zeros' (exact for non-negative inputs, e.g. after a ReLU; "
                            "cheaper on Ethos-U)")}

    def out_channels(self, b, cin):
        return cin

    def expand(self, b, cin, net):
        return ir.BlockGraph((ir.MaxPool("pool", b.kernel, b.stride, block_padding(b, net), b.fill),))
