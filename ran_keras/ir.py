"""A tiny layer-level IR that block kinds expand into.

Every block kind (IBN, AFRB, collapsed conv, ...) is described once, as a ``BlockGraph`` of
primitive ops. The analytic profiler (``ran_keras.profile``) and the Keras builder
(``ran_keras.builder``) both consume this IR, so params/MACs and the built model cannot drift
apart. Op ``name`` is a suffix; the builder prefixes it with the block's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union


@dataclass(frozen=True)
class Conv:
    name: str
    filters: int
    kernel: int
    stride: int = 1
    bias: bool = False


@dataclass(frozen=True)
class DepthwiseConv:
    name: str
    kernel: int
    stride: int = 1
    bias: bool = False
    padding: str = "same"     # 'valid' after an explicit ZeroPad


@dataclass(frozen=True)
class BatchNorm:
    name: str


@dataclass(frozen=True)
class LayerNorm:
    name: str


@dataclass(frozen=True)
class Act:
    """A named activation (see ``ran_keras.activations``); never 'linear' (that is no op)."""
    name: str
    fn: str


@dataclass(frozen=True)
class SharedPReLU:
    """One call of a block's shared-alpha PReLU: slope ``alpha`` or, if complement, ``1 - alpha``.

    All SharedPReLU ops of a block with the same ``name`` share one scalar variable.
    """
    name: str
    complement: bool
    alpha_init: float
    alpha_clip: Optional[Tuple[float, float]] = None


@dataclass(frozen=True)
class MaxPool:
    name: str
    kernel: int
    stride: int


@dataclass(frozen=True)
class LayerScale:
    """ConvNeXt's layer scale: a trainable per-channel factor, initialised to ``init``."""
    name: str
    init: float


@dataclass(frozen=True)
class DropPath:
    """Stochastic depth on a residual branch: while training, zero the branch for a sample with
    probability ``rate`` (and scale the kept ones by 1 / (1 - rate)); the identity at inference."""
    name: str
    rate: float


@dataclass(frozen=True)
class ZeroPad:
    """The zero padding a 'same' k x k, stride-s op would add itself (see ``same_padding``).

    Lets a block pad early, e.g. the AFRB's ``pad_expanded`` form: pad the expanded map before its
    BN, then a 'valid' depthwise conv, so the block is exactly a padded k x k conv at alpha = 1.
    """
    name: str
    kernel: int
    stride: int


Op = Union[Conv, DepthwiseConv, BatchNorm, LayerNorm, Act, SharedPReLU, MaxPool, LayerScale, DropPath, ZeroPad]


def same_size(size: int, stride: int) -> int:
    """Spatial output size of a 'same'-padded op: ceil(size / stride)."""
    return -(-size // stride)


def same_padding(size: Optional[int], kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) zero padding of TF's 'same' along one axis; the extra one goes after.

    An unknown size (None) gets the stride-1 amounts, which keep the 'same' output size.
    """
    if size is None:
        return (kernel - 1) // 2, kernel // 2
    out = same_size(size, stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class BlockGraph:
    """``post(main(x) + shortcut(x))``; ``shortcut`` None means no residual, () the identity."""
    main: Tuple[Op, ...]
    shortcut: Optional[Tuple[Op, ...]] = None
    post: Tuple[Op, ...] = ()

    @property
    def residual(self) -> bool:
        return self.shortcut is not None


def act_ops(name: str, fn: str) -> Tuple[Op, ...]:
    """The activation op, or nothing for 'linear'."""
    return () if fn == "linear" else (Act(name, fn),)


def layer_name(prefix: str, op_name: str) -> str:
    """The Keras layer name of an op inside a block (``prefix`` includes the model name)."""
    return f"{prefix}_{op_name}"
