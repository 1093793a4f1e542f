"""The primitive ops block kinds expand into, each with its rules in one place.

An op knows its output shape, its cost (params, MACs, non-linear units), how NN-Mass reads it
(``role``) and which Keras layer the builder makes for it. The profiler, NN-Mass, the scaling
sweep and the builder only call these methods, so a new op is one class here. ``Parallel`` runs
several chains of ops on the same input and merges them (add, concatenate, multiply): branching
blocks are data like any other.

Shapes are ``(height, width, channels)``; height and width may be None (unknown), in which case
MACs are None. Op ``name`` is a suffix; the Keras layer is ``{block prefix}_{name}``. Keras is
imported only inside ``keras`` methods, so the rest works without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple, Optional, Tuple

from ran_keras import activations
from ran_keras.ir.costs import (conv_macs, conv_params, depthwise_macs, depthwise_params, same_padding, same_size,
                                symmetric_pad, symmetric_size, valid_size)

Shape = Tuple[Optional[int], Optional[int], int]
#: 'same': TensorFlow's (the extra row/column of an odd total goes after); 'valid': none;
#: 'symmetric': PyTorch's, (k - 1) // 2 on every side (``symmetric_pad``)
PADDINGS = ("same", "valid", "symmetric")
MERGES = ("add", "concat", "multiply")


class Cost(NamedTuple):
    params: int = 0
    trainable: int = 0
    macs: Optional[int] = 0
    mac_kind: str = ""          # 'conv', 'depthwise', 'dense' or '' (not counted)
    nonlinear_units: int = 0


class Leaf(NamedTuple):
    """One op as the profiler and NN-Mass see it: input and output shapes, and ``path``, the index
    of the branch taken at each enclosing ``Parallel`` (() outside any)."""
    op: Any
    in_shape: Shape
    out_shape: Shape
    path: Tuple[int, ...]


def layer_name(prefix: str, op_name: str) -> str:
    """The Keras layer name of an op inside a block (``prefix`` includes the model name)."""
    return f"{prefix}_{op_name}"


def _mul(*dims: Optional[int]) -> Optional[int]:
    out = 1
    for d in dims:
        if d is None:
            return None
        out *= d
    return out


def check_padding(padding: str, what: str = "padding") -> str:
    if padding not in PADDINGS:
        raise ValueError(f"{what} must be one of {', '.join(PADDINGS)}, got {padding!r}")
    return padding


def _spatial(shape: Shape, kernel: int, stride: int, padding: str) -> Tuple[Optional[int], Optional[int]]:
    if padding == "same":
        return same_size(shape[0], stride), same_size(shape[1], stride)
    size = valid_size if check_padding(padding) == "valid" else symmetric_size
    return size(shape[0], kernel, stride), size(shape[1], kernel, stride)


class Op:
    """Base of every op: the identity with no cost. Subclasses are frozen dataclasses with ``name``."""

    #: how NN-Mass reads the op: 'layer' (a weight layer of the chain), 'activation' (non-linear units), None
    role: ClassVar[Optional[str]] = None
    #: the label of the profile row (the Keras class the builder makes)
    label: ClassVar[str] = ""

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def cost(self, in_shape: Shape, out_shape: Shape) -> Cost:
        return Cost()

    def row_label(self) -> str:
        return self.label

    def trace(self, shape: Shape, path: Tuple[int, ...] = ()) -> Iterator[Leaf]:
        """Yield the leaf ops this op consists of (itself); returns the output shape."""
        out = self.out_shape(shape)
        yield Leaf(self, shape, out, path)
        return out

    def keras(self, x, prefix: str, ctx):
        """Apply the op's Keras layer to ``x``; ``ctx`` is the builder's ``BuildContext``."""
        raise NotImplementedError(f"{type(self).__name__} has no Keras layer")


class _Spatial(Op):
    """What Conv, DepthwiseConv and MaxPool share: a k x k window at a stride with a ``padding``.

    'symmetric' padding that Keras' own 'same'/'valid' cannot express (stride > 1, or an even
    kernel) becomes a padding layer of its own, ``{name}_pad`` (a ``Pad`` leaf the profiler lists),
    followed by the op with 'valid' padding; at stride 1 with an odd kernel it is Keras' 'same'.
    """
    pad_mode: ClassVar[str] = "zeros"

    def __post_init__(self):
        check_padding(self.padding, f"{type(self).__name__} {self.name!r}: padding")

    def explicit_pad(self) -> int:
        """Per-side padding put in a layer of its own before the op (0: none)."""
        if self.padding != "symmetric" or (self.stride == 1 and self.kernel % 2 == 1):
            return 0
        return symmetric_pad(self.kernel)

    def keras_padding(self) -> str:
        """The Keras layer's own padding argument."""
        if self.padding != "symmetric":
            return self.padding
        return "same" if self.stride == 1 and self.kernel % 2 == 1 else "valid"

    def _pad_op(self) -> Optional["Pad"]:
        p = self.explicit_pad()
        return Pad(f"{self.name}_pad", p, getattr(self, "fill", self.pad_mode)) if p else None

    def out_shape(self, shape):
        return (*_spatial(shape, self.kernel, self.stride, self.padding), self._out_channels(shape))

    def trace(self, shape, path=()):
        pad = self._pad_op()
        out = self.out_shape(shape)
        if pad is not None:
            padded = pad.out_shape(shape)
            yield Leaf(pad, shape, padded, path)
            shape = padded
        yield Leaf(self, shape, out, path)
        return out

    def _padded(self, x, prefix, ctx):
        pad = self._pad_op()
        return x if pad is None else pad.keras(x, prefix, ctx)


@dataclass(frozen=True)
class Conv(_Spatial):
    name: str
    filters: int
    kernel: int
    stride: int = 1
    bias: bool = False
    padding: str = "same"
    role: ClassVar[str] = "layer"
    label: ClassVar[str] = "Conv2D"

    def _out_channels(self, shape):
        return self.filters

    def cost(self, i, o):
        p = conv_params(self.kernel, i[2], self.filters, self.bias)
        return Cost(p, p, _mul(o[0], o[1], conv_macs(1, 1, self.kernel, i[2], self.filters)), "conv")

    def keras(self, x, prefix, ctx):
        return ctx.layers.Conv2D(self.filters, self.kernel, strides=self.stride, padding=self.keras_padding(),
                                 use_bias=self.bias, kernel_initializer=ctx.conv_init(),
                                 name=layer_name(prefix, self.name))(self._padded(x, prefix, ctx))


@dataclass(frozen=True)
class DepthwiseConv(_Spatial):
    name: str
    kernel: int
    stride: int = 1
    bias: bool = False
    padding: str = "same"     # 'valid' after an explicit ZeroPad
    role: ClassVar[str] = "layer"
    label: ClassVar[str] = "DepthwiseConv2D"

    def _out_channels(self, shape):
        return shape[2]

    def cost(self, i, o):
        p = depthwise_params(self.kernel, i[2], self.bias)
        return Cost(p, p, _mul(o[0], o[1], depthwise_macs(1, 1, self.kernel, i[2])), "depthwise")

    def keras(self, x, prefix, ctx):
        return ctx.layers.DepthwiseConv2D(self.kernel, strides=self.stride, padding=self.keras_padding(),
                                          use_bias=self.bias, depthwise_initializer=ctx.conv_init(),
                                          name=layer_name(prefix, self.name))(self._padded(x, prefix, ctx))


@dataclass(frozen=True)
class BatchNorm(Op):
    """BatchNormalization; params include the moving mean and variance (not trainable)."""
    name: str
    label: ClassVar[str] = "BatchNormalization"

    def cost(self, i, o):
        return Cost(4 * i[2], 2 * i[2])

    def keras(self, x, prefix, ctx):
        return ctx.layers.BatchNormalization(momentum=ctx.spec.bn_momentum, epsilon=ctx.spec.bn_epsilon,
                                             name=layer_name(prefix, self.name))(x)


@dataclass(frozen=True)
class LayerNorm(Op):
    """LayerNormalization over channels (ConvNeXt's, epsilon 1e-6)."""
    name: str
    epsilon: float = 1e-6
    label: ClassVar[str] = "LayerNormalization"

    def cost(self, i, o):
        return Cost(2 * i[2], 2 * i[2])

    def keras(self, x, prefix, ctx):
        return ctx.layers.LayerNormalization(epsilon=self.epsilon, name=layer_name(prefix, self.name))(x)


@dataclass(frozen=True)
class Act(Op):
    """A registered activation (``ran_keras.activations``); never 'linear' (that is no op)."""
    name: str
    fn: str
    role: ClassVar[str] = "activation"

    def row_label(self):
        return f"Activation({self.fn})"

    def cost(self, i, o):
        act = activations.get(self.fn)
        p = act.params_per_channel * i[2]
        return Cost(p, p, nonlinear_units=i[2] if act.nonlinear else 0)

    def keras(self, x, prefix, ctx):
        return activations.get(self.fn).layer(layer_name(prefix, self.name))(x)


@dataclass(frozen=True)
class SharedPReLU(Op):
    """One call of a block's shared-alpha PReLU: slope ``alpha`` or, if complement, ``1 - alpha``.

    All SharedPReLU ops of a block with the same ``name`` share one scalar variable (one layer
    called twice: the profiler counts its weight at the first call, as Keras does).
    """
    name: str
    complement: bool
    alpha_init: float
    alpha_clip: Optional[Tuple[float, float]] = None
    role: ClassVar[str] = "activation"

    def row_label(self):
        return "SharedAlphaPReLU(1-a)" if self.complement else "SharedAlphaPReLU(a)"

    def cost(self, i, o):
        return Cost(1, 1, nonlinear_units=i[2])

    def keras(self, x, prefix, ctx):
        from ran_keras.layers import SharedAlphaPReLU
        name = layer_name(prefix, self.name)
        if name not in ctx.shared:
            ctx.shared[name] = SharedAlphaPReLU(self.alpha_init, self.alpha_clip, name=name)
        return ctx.shared[name](x, complement=self.complement)


@dataclass(frozen=True)
class MaxPool(_Spatial):
    """Max pooling. 'symmetric' padding is PyTorch's -inf padding; ``fill`` says how it is made:
    'edge' (mirrored border values, ``EdgePad``: the same maxima for any input, since PyTorch allows
    at most k // 2) or 'zeros' (ZeroPadding2D: the same maxima only for non-negative inputs, e.g.
    after a ReLU, and cheaper on Ethos-U, where Vela fuses the pad into the layer before)."""
    name: str
    kernel: int
    stride: int
    padding: str = "same"
    fill: str = "edge"
    label: ClassVar[str] = "MaxPooling2D"

    def __post_init__(self):
        super().__post_init__()
        if self.fill not in ("edge", "zeros"):
            raise ValueError(f"MaxPool {self.name!r}: fill must be 'edge' or 'zeros', got {self.fill!r}")

    def _out_channels(self, shape):
        return shape[2]

    def keras(self, x, prefix, ctx):
        return ctx.layers.MaxPooling2D(self.kernel, self.stride, padding=self.keras_padding(),
                                       name=layer_name(prefix, self.name))(self._padded(x, prefix, ctx))


@dataclass(frozen=True)
class Pad(Op):
    """``amount`` rows and columns on every side: zeros (ZeroPadding2D, before a convolution) or
    mirrored border values (``EdgePad``, before max pooling)."""
    name: str
    amount: int
    mode: str = "zeros"

    def row_label(self):
        return "ZeroPadding2D" if self.mode == "zeros" else "EdgePad"

    def out_shape(self, shape):
        grow = lambda s: None if s is None else s + 2 * self.amount  # noqa: E731
        return grow(shape[0]), grow(shape[1]), shape[2]

    def keras(self, x, prefix, ctx):
        name = layer_name(prefix, self.name)
        if self.mode == "zeros":
            return ctx.layers.ZeroPadding2D(self.amount, name=name)(x)
        from ran_keras.layers import EdgePad
        return EdgePad(self.amount, name=name)(x)


@dataclass(frozen=True)
class LayerScale(Op):
    """ConvNeXt's layer scale: a trainable per-channel factor, initialised to ``init``."""
    name: str
    init: float
    label: ClassVar[str] = "LayerScale"

    def cost(self, i, o):
        return Cost(i[2], i[2])

    def keras(self, x, prefix, ctx):
        from ran_keras.layers import LayerScale as Layer
        return Layer(self.init, name=layer_name(prefix, self.name))(x)


@dataclass(frozen=True)
class DropPath(Op):
    """Stochastic depth on a residual branch: while training, zero the branch for a sample with
    probability ``rate`` (and scale the kept ones by 1 / (1 - rate)); the identity at inference."""
    name: str
    rate: float
    label: ClassVar[str] = "Dropout"

    def keras(self, x, prefix, ctx):
        return ctx.layers.Dropout(self.rate, noise_shape=(None, 1, 1, 1), name=layer_name(prefix, self.name))(x)


@dataclass(frozen=True)
class ZeroPad(Op):
    """The zero padding a k x k, stride-s op would add itself with ``padding`` ('same':
    ``same_padding``; 'symmetric': ``symmetric_pad`` on each side).

    Lets a block pad early, e.g. the AFRB's ``pad_expanded`` form: pad the expanded map before its
    BN, then a 'valid' depthwise conv, so the block is exactly a padded k x k conv at alpha = 1.
    """
    name: str
    kernel: int
    stride: int
    padding: str = "same"
    label: ClassVar[str] = "ZeroPadding2D"

    def _amounts(self, size):
        if self.padding == "symmetric":
            return (symmetric_pad(self.kernel),) * 2
        return same_padding(size, self.kernel, self.stride)

    def out_shape(self, shape):
        h, w, c = shape
        pad = lambda s: None if s is None else s + sum(self._amounts(s))  # noqa: E731
        return pad(h), pad(w), c

    def keras(self, x, prefix, ctx):
        pads = tuple(self._amounts(d) for d in x.shape[1:3])
        return ctx.layers.ZeroPadding2D(pads, name=layer_name(prefix, self.name))(x)


@dataclass(frozen=True)
class Merge(Op):
    """The layer that joins the branches of a ``Parallel`` (what the profiler lists for it)."""
    name: str
    merge: str = "add"

    def row_label(self):
        return {"add": "Add", "concat": "Concatenate", "multiply": "Multiply"}[self.merge]


@dataclass(frozen=True)
class Parallel(Op):
    """Run each chain of ``branches`` on the same input and merge the results.

    An empty chain is the identity (a residual). 'add' and 'multiply' need equal shapes;
    'concat' joins channels. ``name`` names the merge layer.
    """
    name: str
    branches: Tuple[Tuple[Op, ...], ...]
    merge: str = "add"

    def __post_init__(self):
        if self.merge not in MERGES:
            raise ValueError(f"Parallel {self.name!r}: merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        if len(self.branches) < 2:
            raise ValueError(f"Parallel {self.name!r}: needs at least two branches, got {len(self.branches)}")

    def trace(self, shape, path=()):
        outs = []
        for i, branch in enumerate(self.branches):
            out = shape
            for op in branch:
                out = yield from op.trace(out, path + (i,))
            outs.append(out)
        merged = self._merged(outs)
        yield Leaf(Merge(self.name, self.merge), tuple(outs[0]), merged, path)
        return merged

    def _merged(self, outs) -> Shape:
        if self.merge == "concat":
            if len({o[:2] for o in outs}) != 1:
                raise ValueError(f"Parallel {self.name!r}: concat needs equal spatial sizes, got {outs}")
            return (*outs[0][:2], sum(o[2] for o in outs))
        if len(set(outs)) != 1:
            raise ValueError(f"Parallel {self.name!r}: {self.merge} needs equal shapes, got {outs}")
        return outs[0]

    def keras(self, x, prefix, ctx):
        ys = [apply_ops(branch, x, prefix, ctx) for branch in self.branches]
        layer = {"add": ctx.layers.Add, "concat": ctx.layers.Concatenate, "multiply": ctx.layers.Multiply}[self.merge]
        return layer(name=layer_name(prefix, self.name))(ys)


def act_ops(name: str, fn: str) -> Tuple[Op, ...]:
    """The activation op, or nothing for a linear activation."""
    return (Act(name, fn),) if activations.get(fn).nonlinear else ()


def trace_ops(ops, shape: Shape, path: Tuple[int, ...] = ()) -> Iterator[Leaf]:
    """Yield the leaves of a chain of ops; returns the chain's output shape."""
    for op in ops:
        shape = yield from op.trace(shape, path)
    return shape


def trace(ops, shape: Shape) -> Tuple[list, Shape]:
    """(the leaves of a chain of ops, its output shape)."""
    leaves: list = []
    gen = trace_ops(ops, shape)
    while True:
        try:
            leaves.append(next(gen))
        except StopIteration as end:
            return leaves, end.value


def apply_ops(ops, x, prefix: str, ctx):
    """The Keras tensor of a chain of ops applied to ``x``."""
    for op in ops:
        x = op.keras(x, prefix, ctx)
    return x
