"""Mobile block kinds: the inverted bottleneck (IBN), the collapsed block, and the AFRBs (paper Sec. 2.2)."""

from __future__ import annotations

import math

from ran_keras import ir
from ran_keras.blocks.base import (ACTIVATION, ALPHA_INIT, CHANNELS, EXPANSION, KERNEL, MID, PAD_EXPANDED, STRIDE,
                                 BlockKind, block_activation, can_add, pair_blocks, require_residual, hidden_channels, register_kind)
from ran_keras.errors import SpecError


def _ibn_ops(prefix: str, cin: int, hidden: int, cout: int, kernel: int, stride: int, act: str, pad: str):
    ops = []
    if hidden != cin:
        ops += [ir.Conv(prefix + "expand", hidden, 1), ir.BatchNorm(prefix + "expand_bn")]
        ops += ir.act_ops(prefix + "expand_act", act)
    ops += [ir.DepthwiseConv(prefix + "dw", kernel, stride, padding=pad), ir.BatchNorm(prefix + "dw_bn")]
    ops += ir.act_ops(prefix + "dw_act", act)
    ops += [ir.Conv(prefix + "project", cout, 1), ir.BatchNorm(prefix + "project_bn")]
    return ops


@register_kind
class IBNBlock(BlockKind):
    name = "ibn"
    doc = ("inverted bottleneck (MBConv without squeeze-excite): 1x1 expand -> BN -> act -> "
           "k x k depthwise -> BN -> act -> 1x1 project -> BN, residual when stride 1 and in == out; "
           "with mid_channels, two such sub-blocks C -> mid -> C with an outer residual")
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "expansion": EXPANSION,
              "activation": ACTIVATION, "mid_channels": MID}

    def check_input(self, b, cin, path):
        if b.mid_channels is not None:
            require_residual(self.name, cin, b.channels, b.stride, path, "with mid_channels (pair form)")

    def expand(self, b, cin, net):
        act = block_activation(b, net)
        if b.mid_channels is None:
            hidden = hidden_channels(b.expansion, cin, b.channels, pair=False)
            ops = _ibn_ops("", cin, hidden, b.channels, b.kernel, b.stride, act, net.padding)
            return ir.BlockGraph(tuple(ops), () if can_add(cin, b.channels, b.stride) else None)
        ops = []
        for prefix, a, z in pair_blocks(cin, b.mid_channels, b.channels):
            ops += _ibn_ops(prefix, a, hidden_channels(b.expansion, a, z, pair=True), z, b.kernel, 1, act, net.padding)
        return ir.BlockGraph(tuple(ops), ())


def _collapsed_ops(prefix: str, cout: int, kernel: int, stride: int, act: str, leading_bn: bool, pad: str):
    ops = [ir.BatchNorm(prefix + "pre_bn")] if leading_bn else []
    ops += ir.act_ops(prefix + "act", act)
    ops += [ir.Conv(prefix + "conv", cout, kernel, stride, padding=pad), ir.BatchNorm(prefix + "bn")]
    return ops


@register_kind
class CollapsedBlock(BlockKind):
    name = "collapsed"
    doc = ("a restructured AFRB/IBN: BN -> act -> k x k conv -> BN, residual when stride 1 and "
           "in == out; with mid_channels (the AFRB-3 slot) two convs C -> mid -> C with an act between "
           "and an outer residual. 'expansion' records the expanded (trainable) form it stands for; "
           "it does not change the deployed block")
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "expansion": EXPANSION,
              "activation": ACTIVATION, "mid_channels": MID}
    check_input = IBNBlock.check_input

    def expand(self, b, cin, net):
        act = block_activation(b, net)
        if b.mid_channels is None:
            ops = _collapsed_ops("", b.channels, b.kernel, b.stride, act, True, net.padding)
            return ir.BlockGraph(tuple(ops), () if can_add(cin, b.channels, b.stride) else None)
        ops = (_collapsed_ops("sub1_", b.mid_channels, b.kernel, 1, act, True, net.padding)
               + _collapsed_ops("sub2_", b.channels, b.kernel, 1, act, False, net.padding))
        return ir.BlockGraph(tuple(ops), ())


def _afrb_ops(prefix: str, cin: int, hidden: int, cout: int, kernel: int, stride: int, alpha,
              pad_expanded: bool = False, convention: str = "same"):
    init, clip = alpha
    ops = [ir.SharedPReLU("alpha", True, init, clip)]
    padding = convention
    if hidden != cin:
        ops.append(ir.Conv(prefix + "expand", hidden, 1))
        if pad_expanded:  # BN(pad(expand(x))): the ring carries the BN shift, so the fold is a plain conv
            ops.append(ir.ZeroPad(prefix + "pad", kernel, stride, convention))
            padding = "valid"
        ops.append(ir.BatchNorm(prefix + "expand_bn"))
    ops += [ir.DepthwiseConv(prefix + "dw", kernel, stride, padding=padding), ir.BatchNorm(prefix + "dw_bn"),
            ir.SharedPReLU("alpha", False, init, clip),
            ir.Conv(prefix + "project", cout, 1), ir.BatchNorm(prefix + "project_bn")]
    return ops


class _AFRB(BlockKind):
    """PReLU(1 - a) -> 1x1 expand -> BN -> k x k depthwise -> BN -> PReLU(a) -> 1x1 project -> BN."""
    fields = {"channels": CHANNELS, "kernel": KERNEL, "stride": STRIDE, "expansion": EXPANSION,
              "alpha_init": ALPHA_INIT, "pad_expanded": PAD_EXPANDED}
    residual = False

    def _alpha(self, b, net):
        init = b.alpha_init if b.alpha_init is not None else net.alpha_init
        return float(init), net.alpha_clip

    def check_input(self, b, cin, path):
        if self.residual:
            require_residual(self.name, cin, b.channels, b.stride, path, "")

    def expand(self, b, cin, net):
        hidden = hidden_channels(b.expansion, cin, b.channels, pair=False)
        ops = _afrb_ops("", cin, hidden, b.channels, b.kernel, b.stride, self._alpha(b, net), b.pad_expanded,
                        net.padding)
        return ir.BlockGraph(tuple(ops), () if self.residual else None)


@register_kind
class AFRB1(_AFRB):
    name = "afrb1"
    doc = "AFRB-1: " + _AFRB.__doc__ + " No residual."


@register_kind
class AFRB2(_AFRB):
    name = "afrb2"
    doc = "AFRB-2: AFRB-1 plus a residual (needs stride 1 and in == out)."
    residual = True


@register_kind
class AFRB3(_AFRB):
    name = "afrb3"
    doc = ("AFRB-3: two AFRB sub-blocks C -> mid -> C (mid defaults to C/2) sharing one alpha, with an "
           "outer residual; each expands to expansion * max(in, out). At alpha = 1 it collapses to a "
           "residual pair of k x k convs with the MACs of a collapsed AFRB-1")
    fields = dict(_AFRB.fields, mid_channels=MID)
    residual = True

    def finalize(self, values, path):
        if values["mid_channels"] is None:
            values["mid_channels"] = max(1, values["channels"] // 2)
        if values["stride"] != 1:
            raise SpecError(f"{path}.stride", f"an 'afrb3' block keeps its resolution; must be 1, "
                                              f"got {values['stride']}")
        return values

    def expand(self, b, cin, net):
        alpha = self._alpha(b, net)
        ops = []
        for prefix, a, z in pair_blocks(cin, b.mid_channels, b.channels):
            ops += _afrb_ops(prefix, a, hidden_channels(b.expansion, a, z, pair=True), z, b.kernel, 1, alpha,
                             b.pad_expanded, net.padding)
        return ir.BlockGraph(tuple(ops), ())


AFRB_KINDS = ("afrb1", "afrb2", "afrb3")

#: the decision rule's band (paper footnote 4): an AFRB whose alpha lies in [0.8, 1.3] collapses
#: into a regular convolution (the search) or is folded with alpha set to 1 (the rewriter)
AFRB_BAND = (0.8, 1.3)


def check_afrb_band(band, what: str = "band"):
    """``(low, high)`` as floats if it is a usable collapse band, else SpecError naming ``what``.

    One rule for the search and the rewriter: two finite numbers with low <= 1 <= high (alpha = 1
    is where an AFRB becomes linear; a band without it would collapse blocks that are not).
    """
    try:
        low, high = (float(v) for v in band)
    except (TypeError, ValueError):
        raise SpecError(what, f"must be two numbers 'low,high', e.g. {AFRB_BAND[0]:g},{AFRB_BAND[1]:g}, "
                              f"got {band!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= 1.0 <= high):
        raise SpecError(what, f"must be two finite numbers with low <= 1 <= high (alpha = 1 is where an AFRB "
                              f"is linear), got {low:g},{high:g}")
    return low, high
