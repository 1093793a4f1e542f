"""ConvNeXt block kinds (Liu et al. 2022): the residual block, the co-design block (RAN paper
Sec. 4, Fig. 8) and the downsampling layer.

Imported by ``ran_keras.blocks``, so specs, the profiler and the builder
know them like any other kind. The stem (4x4 stride-4 conv with bias, unpadded, then LayerNorm) is
a plain ``conv`` block with ``norm: 'ln'`` and ``padding: 'valid'``, and the head's LayerNorm is the
network's ``classifier_norm: 'ln'``. Unpadded stem and downsampling convs are ConvNeXt's: at input
sizes that are not multiples of 32 they drop the last rows and columns instead of padding.
"""

from __future__ import annotations

from ran_keras import activations, ir
from ran_keras.blocks.base import (ACTIVATION, CHANNELS, EXPANSION, PADDING, BlockKind, Field, activation_check,
                                   block_activation, block_padding, hidden_channels, positive, register_kind,
                                   stride_check)
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
        mlp = (ir.Conv("expand", hidden, 1, bias=True), *ir.act_ops("act", block_activation(b, net)),
               ir.Conv("project", b.channels, 1, bias=True))
        return self._graph(b, net, mlp)

    @staticmethod
    def _graph(b, net, mlp):
        """depthwise -> LayerNorm -> ``mlp`` -> layer scale -> stochastic depth, plus the identity."""
        ops = [ir.DepthwiseConv("dw", b.kernel, 1, bias=True, padding=net.padding), ir.LayerNorm("ln"), *mlp]
        if b.layer_scale is not None:
            ops.append(ir.LayerScale("layer_scale", b.layer_scale))
        if b.drop_path > 0:
            ops.append(ir.DropPath("drop_path", b.drop_path))
        return ir.BlockGraph(tuple(ops), ())


def _fraction_check(value):
    return None if 0 < value < 1 else "must be in (0, 1)"


def _lower_check(value):
    return None if value in LOWER_FORMS else f"must be one of {', '.join(map(repr, LOWER_FORMS))}"


#: the co-design block's lower branch: one w -> w 1x1 ('folded', Fig. 8b right) or the linearised
#: hidden channels kept apart, w -> n_lin -> w ('expanded': trainable like the masked block; folds exactly)
LOWER_FORMS = ("folded", "expanded")


def codesign_split(b, cin: int):
    """(GELU channels, linearised channels) of a co-design block's ``expansion * C`` hidden channels."""
    hidden = hidden_channels(b.expansion, cin, b.channels, pair=False)
    linear = int(round(b.linear_fraction * hidden))
    return hidden - linear, linear


@register_kind
class ConvNeXtCodesign(ConvNeXtBlock):
    name = "convnext_codesign"
    doc = ("ConvNeXt co-design block (RAN Sec. 4, Fig. 8): a ConvNeXt block whose hidden channels lose their "
           "activation on a fraction linear_fraction, split into two added branches: upper 1x1 -> act -> 1x1 "
           "on the rest, lower (the linear channels) one C -> C 1x1 ('folded') or 1x1 -> 1x1 through them "
           "('expanded'), then psi")
    fields = dict(ConvNeXtBlock.fields,
                  linear_fraction=Field((int, float), 0.4, _fraction_check,
                                        "fraction of the expansion * C hidden channels without activation "
                                        "(rounded to whole channels)"),
                  psi=Field((str,), "linear", activation_check,
                            "activation after the lower branch: 'none' (Model A), 'gelu' (B), 'exp' (C), "
                            "'bounded_exp' (stable), or any registered activation"),
                  lower=Field((str,), "folded", _lower_check,
                              "lower branch form: 'folded' (one C -> C 1x1) or 'expanded' (C -> linear "
                              "channels -> C, no bias on the second conv)"))

    def finalize(self, values, path):
        values = super().finalize(values, path)
        values["linear_fraction"] = float(values["linear_fraction"])
        values["psi"] = activations.canonical(values["psi"], f"{path}.psi")
        return values

    def check_input(self, b, cin, path):
        super().check_input(b, cin, path)
        upper, linear = codesign_split(b, cin)
        if not upper or not linear:
            raise SpecError(path, f"linear_fraction {b.linear_fraction} of {upper + linear} hidden channels "
                                  f"leaves {upper} with activation and {linear} linear; both need at least one")

    def expand(self, b, cin, net):
        upper, linear = codesign_split(b, cin)
        top = (ir.Conv("expand", upper, 1, bias=True), *ir.act_ops("act", block_activation(b, net)),
               ir.Conv("project", b.channels, 1, bias=True))
        if b.lower == "folded":
            bottom = (ir.Conv("lower", b.channels, 1, bias=True),)
        else:
            bottom = (ir.Conv("lower_expand", linear, 1, bias=True),
                      ir.Conv("lower_project", b.channels, 1, bias=False))
        bottom += ir.act_ops("psi", b.psi)
        return self._graph(b, net, (ir.Parallel("branches", (top, bottom)),))


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
