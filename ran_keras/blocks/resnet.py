"""ResNet's basic block."""

from __future__ import annotations

from ran_keras import ir
from ran_keras.blocks.base import ACTIVATION, CHANNELS, KERNEL, STRIDE, BlockKind, block_activation, can_add, register_kind


@register_kind
class BasicBlock(BlockKind):
    name = "basic"
    doc = ("ResNet basic block: k x k conv -> BN -> act -> k x k conv -> BN, plus the identity or a "
           "1x1 conv + BN projection, then act")
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "activation": ACTIVATION}

    def expand(self, b, cin, net):
        act, pad = block_activation(b, net), net.padding
        main = [ir.Conv("conv1", b.channels, b.kernel, b.stride, padding=pad), ir.BatchNorm("bn1"),
                *ir.act_ops("act1", act), ir.Conv("conv2", b.channels, b.kernel, padding=pad), ir.BatchNorm("bn2")]
        if can_add(cin, b.channels, b.stride):
            shortcut = ()
        else:
            shortcut = (ir.Conv("proj", b.channels, 1, b.stride, padding=pad), ir.BatchNorm("proj_bn"))
        return ir.BlockGraph(tuple(main), shortcut, tuple(ir.act_ops("out_act", act)))
