"""Offline photos and input normalisation."""

import numpy as np
import pytest

import ran_keras
from ran_keras.data.photos import normalize, offline_photos


def test_offline_photos_are_deterministic_and_varied():
    a = offline_photos(14, 32)
    b = offline_photos(14, 32)
    assert a.shape == (14, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert len({img.tobytes() for img in a}) == 14
    assert not np.array_equal(offline_photos(14, 32, seed=1)[13], a[13])
    assert offline_photos(2, 16, channels=1).shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="channels 1 or 3"):
        offline_photos(2, 16, channels=2)


def test_normalize_uses_the_spec_constants():
    x = np.full((1, 2, 2, 3), 255, np.uint8)
    lite = normalize(x, ran_keras.get_spec("efficientnet_lite_b0"))
    np.testing.assert_allclose(lite, (255 - 127.0) / 128.0)
    r18 = normalize(x, ran_keras.get_spec("resnet18"))
    np.testing.assert_allclose(r18[0, 0, 0], (255 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375]), rtol=1e-6)
