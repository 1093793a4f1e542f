"""Cost formulas of the primitive ops: parameters and multiply-accumulates.

Plain arithmetic, so the arguments may be Python ints or numpy arrays. Every cost in the project
(the op rules of ``ran_keras.ir.ops``, hence the profiler, the scaling sweep and the rewriter's
planner) comes from here.
"""

from __future__ import annotations

from typing import Optional, Tuple


def conv_params(kernel: int, cin: int, cout: int, bias: bool, groups: int = 1) -> int:
    return kernel * kernel * (cin // groups) * cout + (cout if bias else 0)


def conv_macs(out_h: int, out_w: int, kernel: int, cin: int, cout: int, groups: int = 1) -> int:
    return out_h * out_w * kernel * kernel * (cin // groups) * cout


def depthwise_params(kernel: int, channels: int, bias: bool) -> int:
    return kernel * kernel * channels + (channels if bias else 0)


def depthwise_macs(out_h: int, out_w: int, kernel: int, channels: int) -> int:
    return out_h * out_w * kernel * kernel * channels


def dense_params(fin: int, fout: int, bias: bool = True) -> int:
    return fin * fout + (fout if bias else 0)


def same_size(size: Optional[int], stride: int) -> Optional[int]:
    """Spatial output size of a 'same'-padded op: ceil(size / stride); None stays None."""
    return None if size is None else -(-size // stride)


def valid_size(size: Optional[int], kernel: int, stride: int) -> Optional[int]:
    """Spatial output size of an unpadded ('valid') op; None stays None."""
    return None if size is None else (size - kernel) // stride + 1


def same_padding(size: Optional[int], kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) zero padding of TF's 'same' along one axis; the extra one goes after.

    An unknown size (None) gets the stride-1 amounts, which keep the 'same' output size.
    """
    if size is None:
        return (kernel - 1) // 2, kernel // 2
    out = same_size(size, stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def symmetric_pad(kernel: int) -> int:
    """Per-side zero padding of the 'symmetric' (PyTorch) convention: (k - 1) // 2, i.e. PyTorch's
    ``padding=k // 2`` for odd kernels and none for 1x1 and 2x2."""
    return (kernel - 1) // 2


def symmetric_size(size: Optional[int], kernel: int, stride: int) -> Optional[int]:
    """Spatial output size with ``symmetric_pad`` on both sides: floor((n + 2p - k) / s) + 1."""
    return None if size is None else (size + 2 * symmetric_pad(kernel) - kernel) // stride + 1
