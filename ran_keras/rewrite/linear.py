"""Exact folding of linear layer chains: float64 numpy, no TensorFlow.

Layout is channels-last throughout. A chain is a list of units, each an affine map:

* ``Pointwise(weight, bias)``: ``y = x @ W + b`` at every pixel - a 1x1 stride-1 convolution, a
  Dense layer, or (with a 1-D ``weight``, a diagonal) a BatchNorm in inference mode.
* ``Spatial(kernel, bias, strides, padding, depthwise)``: a ``kh x kw`` convolution with TF
  semantics (dense kernel ``(kh, kw, cin, cout)`` or depthwise ``(kh, kw, c)``).

``compose(units)`` folds a chain with at most one spatial unit into one convolution (a depthwise
one when every other unit is a per-channel scale). It is exact,
including at the image borders, by carrying the bias that enters the spatial op *before* it as
per-tap contributions (``Folded.tap_bias``) and turning them into a constant border map
(``Folded.border_map``). Why this is needed, and why it is exact:

    Let the chain be  x -> (x A + a) -> S -> (. P + p), with S a 'same'-padded k x k convolution
    (taps (i, j), kernels S_ij) and bias s. At output pixel q, tap (i, j) reads input pixel
    r = q * stride - pad_before + (i, j). S zero-pads *its own input*, x A + a, so an
    out-of-bounds tap contributes 0 - not a, as it would if x had been zero-padded:

        y[q] = sum_{(i,j) in-bounds(q)} (x[r] A + a) S_ij P + s P + p
             = sum_{(i,j) in-bounds(q)} x[r] K_ij  +  sum_{(i,j) in-bounds(q)} G_ij  +  s P + p,

    with K_ij = A S_ij P (the folded kernel) and G_ij = a S_ij P (the tap bias). The first sum is
    exactly a 'same'-padded convolution of x with K (x's out-of-bounds taps read zero, and
    0 A = 0). The second depends on q only through which taps are in bounds, so it is a constant
    for a fixed input size. Writing it as "all taps" minus "out-of-bounds taps":

        y = conv_same(x, K) + (sum_ij G_ij + s P + p) - M,   M[q] = sum_{(i,j) out-of-bounds(q)} G_ij.

    The first bias is the folded convolution's ordinary bias; -M is zero wherever every tap is in
    bounds (the interior), so it is a border map. Summing G through the kernel and dropping M (the
    naive fold) is wrong exactly on the border rows and columns; TF's 'same' padding for stride 2
    and an even size puts the extra padding after (bottom/right), which ``same_padding`` follows.

No choice of kernel alone can absorb M: the folded convolution sees only x, and M would need an
input vector v with v A = a for every tap, which does not exist when the expansion is wider than
its input. M vanishes when a = 0 (no bias or BN shift between the chain's input and the spatial
op), when the spatial op is 1x1 or 'valid', and when the input is zero-padded before the
pointwise ops (then every tap is "in bounds" of a map that carries a at the pad).

Every function takes and returns float64 arrays; callers store float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ran_keras.errors import RanError
from ran_keras.ir import same_padding  # TF's 'same' amounts: one definition for builder, profiler, rewriter


class FoldError(RanError, ValueError):
    """A fold that was asked for cannot be done (unsupported op, shape or configuration)."""


Pair = Tuple[int, int]


# --- TF padding arithmetic ---------------------------------------------------------------------

def output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    if padding == "valid":
        if size < kernel:
            raise FoldError(f"a 'valid' {kernel}-tap op needs an input of at least {kernel}, got {size}")
        return (size - kernel) // stride + 1
    raise FoldError(f"padding must be 'same' or 'valid', got {padding!r}")


def padding_amounts(size: int, kernel: int, stride: int, padding: str) -> Pair:
    return same_padding(size, kernel, stride) if padding == "same" else (0, 0)


def tap_in_bounds(size: int, kernel: int, stride: int, padding: str) -> np.ndarray:
    """Boolean (out, kernel): whether tap i of output position o reads a pixel inside the input."""
    out = output_size(size, kernel, stride, padding)
    before, _ = padding_amounts(size, kernel, stride, padding)
    pos = np.arange(out)[:, None] * stride - before + np.arange(kernel)[None, :]
    return (pos >= 0) & (pos < size)


# --- BatchNorm ---------------------------------------------------------------------------------

def bn_affine(gamma: Optional[np.ndarray], beta: Optional[np.ndarray], mean: np.ndarray,
              variance: np.ndarray, epsilon: float) -> Tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as ``y = x * scale + shift`` (gamma/beta None: scale=False/center=False)."""
    mean = np.asarray(mean, np.float64)
    variance = np.asarray(variance, np.float64)
    if np.any(variance + epsilon <= 0):
        raise FoldError(f"BatchNorm moving variance + epsilon must be positive, got a minimum of "
                        f"{float(np.min(variance + epsilon))!r}")
    scale = 1.0 / np.sqrt(variance + float(epsilon))
    if gamma is not None:
        scale = scale * np.asarray(gamma, np.float64)
    shift = -mean * scale
    if beta is not None:
        shift = shift + np.asarray(beta, np.float64)
    return scale, shift


def fold_scale_shift(kernel: np.ndarray, bias: Optional[np.ndarray], scale: np.ndarray,
                     shift: np.ndarray, depthwise: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """A per-output-channel affine (a BN) after a conv / depthwise conv / dense, folded into it.

    Output channels are the kernel's last axis, or for a depthwise kernel ``(kh, kw, c, m)`` the
    pair ``(c, m)`` (output channel ``c * m + j``), as in Keras. Grouped and dilated convolutions
    fold the same way.
    """
    kernel = np.asarray(kernel, np.float64)
    scale = np.asarray(scale, np.float64)
    out_shape = kernel.shape[-2:] if depthwise else kernel.shape[-1:]
    if scale.size != int(np.prod(out_shape)):
        raise FoldError(f"cannot fold a {scale.size}-channel BatchNorm into a layer with "
                        f"{int(np.prod(out_shape))} output channels")
    bias = np.zeros(scale.size) if bias is None else np.asarray(bias, np.float64)
    return kernel * scale.reshape(out_shape), bias * scale + np.asarray(shift, np.float64)


# --- chain units -------------------------------------------------------------------------------

@dataclass
class Pointwise:
    """``x @ weight + bias``; a 1-D weight is a diagonal (per-channel scale)."""
    weight: np.ndarray
    bias: Optional[np.ndarray] = None

    def __post_init__(self):
        self.weight = np.asarray(self.weight, np.float64)
        if self.weight.ndim not in (1, 2):
            raise FoldError(f"a pointwise weight must be (cin, cout) or a diagonal (c,), "
                            f"got shape {self.weight.shape}")
        self.bias = np.zeros(self.cout) if self.bias is None else np.asarray(self.bias, np.float64)

    @property
    def cin(self) -> int:
        return self.weight.shape[0]

    @property
    def cout(self) -> int:
        return self.weight.shape[-1]

    def matrix(self) -> np.ndarray:
        return np.diag(self.weight) if self.weight.ndim == 1 else self.weight

    def then(self, other: "Pointwise") -> "Pointwise":
        """This map followed by ``other``."""
        if self.cout != other.cin:
            raise FoldError(f"channel mismatch in chain: {self.cout} -> {other.cin}")
        if other.weight.ndim == 1:
            weight = self.weight * other.weight
        elif self.weight.ndim == 1:
            weight = self.weight[:, None] * other.weight
        else:
            weight = self.weight @ other.weight
        return Pointwise(weight, _apply(self.bias, other.weight) + other.bias)


def _apply(vec: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return vec * weight if weight.ndim == 1 else vec @ weight


class _KernelShape:
    """Channel and kernel-size views of a ``(kh, kw, cin, cout)`` or depthwise ``(kh, kw, c)`` kernel."""
    kernel: np.ndarray
    depthwise: bool

    @property
    def cin(self) -> int:
        return self.kernel.shape[2]

    @property
    def cout(self) -> int:
        return self.kernel.shape[2] if self.depthwise else self.kernel.shape[3]

    @property
    def kernel_size(self) -> Pair:
        return self.kernel.shape[0], self.kernel.shape[1]


@dataclass
class Spatial(_KernelShape):
    """A ``kh x kw`` convolution: dense ``(kh, kw, cin, cout)`` or depthwise ``(kh, kw, c)``."""
    kernel: np.ndarray
    bias: Optional[np.ndarray] = None
    strides: Pair = (1, 1)
    padding: str = "same"
    depthwise: bool = False

    def __post_init__(self):
        self.kernel = np.asarray(self.kernel, np.float64)
        want = 3 if self.depthwise else 4
        if self.kernel.ndim != want:
            raise FoldError(f"a {'depthwise' if self.depthwise else 'dense'} spatial kernel must have "
                            f"{want} axes, got shape {self.kernel.shape}")
        if self.padding not in ("same", "valid"):
            raise FoldError(f"padding must be 'same' or 'valid', got {self.padding!r}")
        self.strides = tuple(int(s) for s in self.strides)
        self.bias = np.zeros(self.cout) if self.bias is None else np.asarray(self.bias, np.float64)


Unit = Union[Pointwise, Spatial]


@dataclass
class Folded(_KernelShape):
    """One convolution equal to a chain: ``conv(x, kernel, strides, padding) + bias - border``.

    ``kernel`` is ``(kh, kw, cin, cout)``, or ``(kh, kw, c)`` when ``depthwise`` (a chain of a
    depthwise conv and per-channel scales stays depthwise). ``tap_bias[i, j]`` is the bias that
    tap (i, j) adds when it is in bounds (None if the chain has no bias before its spatial op);
    ``border_map(size)`` turns it into the constant map.
    """
    kernel: np.ndarray
    bias: np.ndarray                   # (cout,): the interior bias, every tap in bounds
    strides: Pair = (1, 1)
    padding: str = "same"
    tap_bias: Optional[np.ndarray] = None   # (kh, kw, cout)
    depthwise: bool = False

    def needs_border_map(self, size: Optional[Sequence[Optional[int]]]) -> bool:
        """Whether the border map is non-zero for an input of ``size`` (H, W); None entries: assume so."""
        if self.tap_bias is None or self.padding == "valid" or not np.any(self.tap_bias):
            return False
        if size is None or any(s is None for s in size):
            return self.kernel_size != (1, 1)
        return bool(np.any(self.border_map(size)))

    def border_map(self, size: Sequence[int]) -> np.ndarray:
        """The constant (Ho, Wo, cout) map to add after the 'same' convolution; zero in the interior."""
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        h, w = (int(s) for s in size)
        rows = tap_in_bounds(h, kh, sh, self.padding)
        cols = tap_in_bounds(w, kw, sw, self.padding)
        out = np.zeros((rows.shape[0], cols.shape[0], self.cout))
        if self.tap_bias is None:
            return out
        g = self.tap_bias
        # out-of-bounds taps = (row out) + (row in, column out); each term is exactly 0 inside
        row_missing = np.einsum("hi,io->ho", (~rows).astype(np.float64), g.sum(axis=1))
        corner = np.einsum("hi,wj,ijo->hwo", rows.astype(np.float64), (~cols).astype(np.float64), g)
        out -= row_missing[:, None, :] + corner
        return out

    def with_identity(self) -> "Folded":
        """The fold of ``chain(x) + x``: the identity added to the kernel's centre tap."""
        kh, kw = self.kernel_size
        if self.cin != self.cout or self.strides != (1, 1) or (self.padding == "valid" and (kh, kw) != (1, 1)):
            raise FoldError(f"a residual identity folds only into a stride-1, 'same', cin == cout "
                            f"convolution; got {self.cin} -> {self.cout}, strides {self.strides}, "
                            f"padding {self.padding!r}")
        kernel = self.kernel.copy()
        kernel[(kh - 1) // 2, (kw - 1) // 2] += 1.0 if self.depthwise else np.eye(self.cin)
        return Folded(kernel, self.bias, self.strides, self.padding, self.tap_bias, self.depthwise)


def compose(units: Sequence[Unit]) -> Folded:
    """Fold a chain of pointwise units and at most one spatial unit into one convolution.

    Exact at the borders through ``Folded.tap_bias`` (see the module docstring for the proof).
    """
    units = list(units)
    if not units:
        raise FoldError("cannot fold an empty chain")
    spatial = [i for i, u in enumerate(units) if isinstance(u, Spatial)]
    if len(spatial) > 1:
        raise FoldError(f"a chain folds into one convolution only with at most one k x k (or strided) op; "
                        f"this one has {len(spatial)} (units {spatial})")
    for a, b in zip(units, units[1:]):
        if a.cout != b.cin:
            raise FoldError(f"channel mismatch in chain: a unit with {a.cout} outputs feeds one with "
                            f"{b.cin} inputs")
    if not spatial:
        total = units[0]
        for u in units[1:]:
            total = total.then(u)
        return Folded(total.matrix()[None, None], total.bias.copy())

    s = spatial[0]
    sp: Spatial = units[s]
    pre = _chain(units[:s], units[0].cin)
    post = _chain(units[s + 1:], sp.cout)
    if sp.depthwise and pre.weight.ndim == 1 and post.weight.ndim == 1:
        kernel = pre.weight * sp.kernel * post.weight
        tap = pre.bias * sp.kernel * post.weight
        bias = tap.sum(axis=(0, 1)) + sp.bias * post.weight + post.bias
        return Folded(kernel, bias, sp.strides, sp.padding, tap if np.any(pre.bias) else None, depthwise=True)
    a_mat, a_bias = pre.matrix(), pre.bias
    p_mat = post.matrix()
    kh, kw = sp.kernel_size
    kernel = np.empty((kh, kw, a_mat.shape[0], p_mat.shape[1]))
    tap = np.empty((kh, kw, p_mat.shape[1]))
    for i in range(kh):
        for j in range(kw):
            if sp.depthwise:
                kernel[i, j] = (a_mat * sp.kernel[i, j]) @ p_mat
                tap[i, j] = (a_bias * sp.kernel[i, j]) @ p_mat
            else:
                kernel[i, j] = a_mat @ sp.kernel[i, j] @ p_mat
                tap[i, j] = a_bias @ sp.kernel[i, j] @ p_mat
    bias = tap.sum(axis=(0, 1)) + sp.bias @ p_mat + post.bias
    return Folded(kernel, bias, sp.strides, sp.padding, tap if np.any(a_bias) else None)


def _chain(units: Sequence[Unit], channels: int) -> Pointwise:
    total = Pointwise(np.ones(channels))
    for u in units:
        total = total.then(u)
    return total


__all__ = ["FoldError", "same_padding", "output_size", "padding_amounts", "tap_in_bounds", "bn_affine",
           "fold_scale_shift", "Pointwise", "Spatial", "Unit", "Folded", "compose"]
