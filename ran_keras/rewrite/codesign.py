"""The co-design restructuring math (paper Sec. 4, Fig. 8b): float64 numpy, no TensorFlow.

A ConvNeXt block's MLP is ``y = act_m(x W1 + b1) W2 + b2``, ``W1: (C, H)``, ``W2: (H, C)``, where
``act_m`` applies the activation on the hidden channels outside the mask and the identity on the
``linear`` ones. Hidden channels can be permuted freely (permute W1's columns, b1 and W2's rows
alike), so the MLP is exactly the sum of two branches:

    upper:  act(x W1[:, U] + b1[U]) W2[U] + b2       (U: channels that keep the activation)
    lower:  (x W1[:, L] + b1[L]) W2[L]                (L: the linearised channels)

and the lower branch, having no activation, is one affine map ``x (W1[:, L] W2[L]) + b1[L] W2[L]``:
a C -> C 1x1 convolution (``fold_lower``). Both steps are exact; float64 keeps rounding below the
float32 weights they are stored in.

Which channels to linearise the paper does not say. ``choose_linear`` offers 'last' (the last
``n`` hidden channels: no data needed, what a co-design block trained from scratch uses) and
'linearity': the channels whose activation is closest to the identity on calibration data,
weighted by how much they reach the output: ``score[h] = E[(act(z_h) - z_h)^2] * ||W2[h]||^2``,
the expected squared change of the MLP's output caused by linearising channel h alone (it ignores
cross-channel correlations; the network is fine-tuned afterwards anyway).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ran_keras.rewrite.linear import FoldError, Pointwise

CRITERIA = ("last", "linearity")
Branch = Tuple[np.ndarray, np.ndarray, np.ndarray]   # (expand (C, n), expand bias (n,), project (n, C))


def _mlp(expand, expand_bias, project) -> Branch:
    w1, b1, w2 = (np.asarray(a, np.float64) for a in (expand, expand_bias, project))
    if w1.ndim != 2 or b1.shape != (w1.shape[1],) or w2.shape != (w1.shape[1], w1.shape[0]):
        raise FoldError(f"a ConvNeXt MLP needs expand (C, H), bias (H,) and project (H, C); got "
                        f"{w1.shape}, {b1.shape}, {w2.shape}")
    return w1, b1, w2


def split_hidden(expand, expand_bias, project, linear: Sequence[int]) -> Tuple[Branch, Branch]:
    """(upper, lower) branches of the MLP with the hidden channels ``linear`` linearised."""
    w1, b1, w2 = _mlp(expand, expand_bias, project)
    mask = linear_mask(w1.shape[1], linear)
    keep = ~mask
    return (w1[:, keep], b1[keep], w2[keep]), (w1[:, mask], b1[mask], w2[mask])


def linear_mask(hidden: int, linear: Sequence[int]) -> np.ndarray:
    """Boolean (hidden,) mask of the linearised channels; FoldError unless 0 < len < hidden, distinct."""
    idx = np.asarray(list(linear), dtype=np.int64)
    if idx.size != len(set(idx.tolist())) or np.any(idx < 0) or np.any(idx >= hidden):
        raise FoldError(f"linear channels must be distinct indices in [0, {hidden}), got {idx.tolist()[:8]}...")
    if not 0 < idx.size < hidden:
        raise FoldError(f"linearise between 1 and {hidden - 1} of {hidden} hidden channels, got {idx.size}")
    mask = np.zeros(hidden, bool)
    mask[idx] = True
    return mask


def fold_lower(expand, expand_bias, project) -> Tuple[np.ndarray, np.ndarray]:
    """The lower branch C -> n -> C (no activation between) as one C -> C map: (weight, bias)."""
    w1, b1, w2 = _mlp(expand, expand_bias, project)
    total = Pointwise(w1, b1).then(Pointwise(w2, np.zeros(w2.shape[1])))
    return total.weight, total.bias


def masked_mlp(x, expand, expand_bias, project, project_bias, linear: Sequence[int], act) -> np.ndarray:
    """Reference: the expanded MLP with ``act`` off on the ``linear`` channels (float64)."""
    w1, b1, w2 = _mlp(expand, expand_bias, project)
    z = np.asarray(x, np.float64) @ w1 + b1
    mask = linear_mask(w1.shape[1], linear)
    return np.where(mask, z, act(z)) @ w2 + np.asarray(project_bias, np.float64)


def linearity_scores(sq_error_mean, project) -> np.ndarray:
    """``E[(act(z) - z)^2]`` per hidden channel times the squared norm of its row of ``project``."""
    err = np.asarray(sq_error_mean, np.float64)
    w2 = np.asarray(project, np.float64)
    if err.shape != (w2.shape[0],):
        raise FoldError(f"need one error per hidden channel ({w2.shape[0]}), got shape {err.shape}")
    return err * np.sum(w2 * w2, axis=1)


def choose_linear(hidden: int, count: int, criterion: str = "last",
                  scores: Optional[np.ndarray] = None) -> np.ndarray:
    """Sorted indices of the ``count`` hidden channels to linearise by ``criterion`` (see module doc)."""
    if criterion not in CRITERIA:
        raise FoldError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}, got {criterion!r}")
    if not 0 < count < hidden:
        raise FoldError(f"linearise between 1 and {hidden - 1} of {hidden} hidden channels, got {count}")
    if criterion == "last":
        return np.arange(hidden - count, hidden)
    if scores is None or np.shape(scores) != (hidden,):
        raise FoldError(f"criterion 'linearity' needs one score per hidden channel ({hidden}), got "
                        f"{None if scores is None else np.shape(scores)}")
    order = np.argsort(np.asarray(scores, np.float64), kind="stable")
    return np.sort(order[:count])


__all__ = ["CRITERIA", "choose_linear", "fold_lower", "linear_mask", "linearity_scores", "masked_mlp",
           "split_hidden"]
