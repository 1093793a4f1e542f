"""RoIAlign against an independent numpy transcription of torchvision's CPU kernel loops.

Checked once against real torchvision 0.29.1 (torch 2.14.1, CPU) in a throw-away venv outside the
repository, on random inputs saved to .npz and compared here (torch is not a dependency):
``_random_case`` with seeds 0-4 (40 RoIs each, 8 of them under 3 px, some partly or wholly
outside the map, spatial_scale 1/32, 7x7, sampling ratio 2, aligned False and True) pooled by
``torchvision.ops.roi_align`` on the NCHW transpose: max abs difference 4.8e-7 (float32).
"""

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection.errors import DetectionError
from ran_keras.tasks.detection.roi_align import roi_align


def _bilinear(fmap, y, x):
    """One sample of the kernel: fmap (H, W, C); returns (C,)."""
    h, w = fmap.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fmap.shape[2], fmap.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * fmap[y_low, x_low] + hy * lx * fmap[y_low, x_high]
            + ly * hx * fmap[y_high, x_low] + ly * lx * fmap[y_high, x_high])


def reference_roi_align(features, rois, batch_indices, out, scale, ratio, aligned=False):
    """Straight loops over RoIs, bins and sample points, in float64."""
    features = features.astype(np.float64)
    result = np.zeros((len(rois), out, out, features.shape[3]))
    offset = 0.5 if aligned else 0.0
    for k, (roi, b) in enumerate(zip(rois.astype(np.float64), batch_indices)):
        x1, y1, x2, y2 = roi * scale - offset
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out, roi_w / out
        for ph in range(out):
            for pw in range(out):
                acc = 0.0
                for iy in range(ratio):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                    for ix in range(ratio):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                        acc = acc + _bilinear(features[b], y, x)
                result[k, ph, pw] = acc / (ratio * ratio)
    return result


def _random_case(rng, batch=2, height=5, width=7, channels=3, count=40, scale=1 / 32):
    features = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
    img_h, img_w = height / scale, width / scale
    x1 = rng.uniform(-0.3 * img_w, 1.1 * img_w, count)
    y1 = rng.uniform(-0.3 * img_h, 1.1 * img_h, count)
    w = np.concatenate([rng.uniform(0, 1.2 * img_w, count - 8), rng.uniform(0, 3, 8)])   # 8 tiny boxes
    h = np.concatenate([rng.uniform(0, 1.2 * img_h, count - 8), rng.uniform(0, 3, 8)])
    rois = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)
    rois[0] = [0, 0, img_w, img_h]                                    # the whole image
    rois[1] = [-2 * img_w, -2 * img_h, -img_w, -img_h]                # entirely outside: zeros
    return features, rois, rng.integers(0, batch, count)


def test_linear_map_hand_values():
    fmap = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)        # f(y, x) = 4 y + x
    got = roi_align(fmap, np.array([[0, 0, 4, 4]], np.float32), [0], 2, 1.0, 2).numpy()[0, ..., 0]
    # bin 0 samples y (or x) at 0.5 and 1.5: mean 1; bin 1 at 2.5 and 3.5, but 3.5 is past the last
    # row so it reads row 3: mean 2.75. f is linear, so each output is f(mean y, mean x)
    np.testing.assert_allclose(got, [[4 * 1 + 1, 4 * 1 + 2.75], [4 * 2.75 + 1, 4 * 2.75 + 2.75]], rtol=1e-6)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("out,ratio", [(7, 2), (3, 1), (2, 3)])
def test_matches_reference_on_random_maps_and_boxes(aligned, out, ratio):
    features, rois, index = _random_case(np.random.default_rng(out * 10 + ratio + aligned))
    got = roi_align(features, rois, index, out, 1 / 32, ratio, aligned).numpy()
    want = reference_roi_align(features, rois, index, out, 1 / 32, ratio, aligned)
    assert got.shape == want.shape == (len(rois), out, out, 3)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    assert np.all(got[1] == 0)


def test_tf_function_and_gradient_to_features():
    features, rois, index = _random_case(np.random.default_rng(7), count=10)
    feats = tf.Variable(features)
    fn = tf.function(lambda f, r, i: roi_align(f, r, i, 7, 1 / 32, 2))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(fn(feats, tf.constant(rois), tf.constant(index)))
    grad = tape.gradient(total, feats)
    # d(sum)/d(features): each output value averages samples whose weights sum to at most 1
    grad = tf.convert_to_tensor(grad).numpy()
    assert np.isfinite(grad).all()
    assert 0 < grad.sum() <= len(rois) * 49 * 3 + 1e-3


def test_refuses_adaptive_sampling():
    with pytest.raises(DetectionError, match="sampling ratio"):
        roi_align(np.zeros((1, 2, 2, 1), np.float32), np.zeros((1, 4), np.float32), [0], 7, 1.0, 0)

