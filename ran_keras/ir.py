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


Op = Union[Conv, DepthwiseConv, BatchNorm, LayerNorm, Act, SharedPReLU, MaxPool]


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
