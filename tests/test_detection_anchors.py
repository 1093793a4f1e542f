"""Anchors: torchvision AnchorGenerator semantics on one feature map (hand-computed values).

Checked once against real torchvision 0.29.1 (torch 2.14.1, CPU) in a throw-away venv outside the
repository, on random inputs saved to .npz and compared here (torch is not a dependency):
``AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),))`` on a 25 x 38 map of an
800 x 1216 batch gives exactly ``grid_anchors((800, 1216), (25, 38))`` (all 14250 anchors equal).
"""

import numpy as np
import pytest

from ran_keras.tasks.detection import anchors
from ran_keras.tasks.detection.errors import DetectionError

# sizes 32..512 x ratios 0.5, 1, 2 (h/w), ratio-major; e.g. ratio 0.5, size 32: w = 32*sqrt(2) = 45.25,
# h = 32/sqrt(2) = 22.63, halves 22.63 / 11.31 rounded to 23 / 11
BASE = np.array([
    [-23, -11, 23, 11], [-45, -23, 45, 23], [-91, -45, 91, 45], [-181, -91, 181, 91], [-362, -181, 362, 181],
    [-16, -16, 16, 16], [-32, -32, 32, 32], [-64, -64, 64, 64], [-128, -128, 128, 128], [-256, -256, 256, 256],
    [-11, -23, 11, 23], [-23, -45, 23, 45], [-45, -91, 45, 91], [-91, -181, 91, 181], [-181, -362, 181, 362],
], np.float32)


def test_base_anchors_rounded_ratio_major():
    np.testing.assert_array_equal(anchors.base_anchors().numpy(), BASE)
    assert anchors.num_anchors_per_location() == 15


def test_rounding_is_half_to_even():
    # size 1, ratio 1: +-0.5 rounds to 0 (torch.round), size 3: +-1.5 -> 2
    np.testing.assert_array_equal(anchors.base_anchors((1, 3), (1.0,)).numpy(),
                                  [[0, 0, 0, 0], [-2, -2, 2, 2]])


def test_grid_2x2_exact_coordinates():
    got = anchors.grid_anchors((64, 64), (2, 2)).numpy()
    assert got.shape == (4 * 15, 4)
    # positions row-major: (x, y) = (0, 0), (32, 0), (0, 32), (32, 32): top-left corners, no half-cell offset
    for p, (x, y) in enumerate([(0, 0), (32, 0), (0, 32), (32, 32)]):
        np.testing.assert_array_equal(got[p * 15:(p + 1) * 15], BASE + np.array([x, y, x, y], np.float32))
    np.testing.assert_array_equal(got[15 + 5], [16, -16, 48, 16])      # position x=32, y=0; ratio 1, size 32
    np.testing.assert_array_equal(got[59], [-149, -330, 213, 394])      # last: (32, 32) + ratio 2, size 512


def test_stride_is_integer_division_per_axis():
    got = anchors.grid_anchors((70, 100), (2, 3), sizes=(32,), aspect_ratios=(1.0,)).numpy()
    # strides 70 // 2 = 35 (y) and 100 // 3 = 33 (x)
    centres = (got[:, :2] + got[:, 2:]) / 2
    np.testing.assert_array_equal(centres, [[0, 0], [33, 0], [66, 0], [0, 35], [33, 35], [66, 35]])


def test_bad_settings_are_refused():
    with pytest.raises(DetectionError, match="anchor sizes"):
        anchors.base_anchors((), (1.0,))
    with pytest.raises(DetectionError, match="aspect ratios"):
        anchors.num_anchors_per_location((32,), (0.0,))
