"""Input data helpers shared by export (calibration) and training: image suffixes, offline photos,
normalisation.

Nothing here downloads anything: the photos ship inside scikit-image and scikit-learn.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

#: image files read from folders (export calibration decodes them with PIL)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
#: the ones TensorFlow's decoders read (tf.io.decode_image), i.e. what training from an image folder takes
TF_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

#: colour photos bundled with scikit-image that load offline ('cat' is 'chelsea' again, so skipped)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "stereo_motorcycle")


def _base_photos() -> List[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images
    photos = list(load_sample_images().images)           # china.jpg, flower.jpg
    for name in SKIMAGE_PHOTOS:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):                        # stereo_motorcycle: (left, right, disparity)
            photos.extend(img[:2])
        else:
            photos.append(img)
    return [np.asarray(p, dtype=np.uint8)[..., :3] for p in photos]


def offline_photos(count: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """``count`` uint8 images (count, size, size, channels) from the photos shipped offline.

    The first pass takes a centred square crop of each photo; further passes take seeded random
    crops (50-100% of the short side) with random horizontal flips, so any count is available
    and the same arguments always give the same bytes.
    """
    from skimage.transform import resize
    if count < 1 or size < 1 or channels not in (1, 3):
        raise ValueError(f"offline_photos needs count >= 1, size >= 1 and channels 1 or 3, "
                         f"got count={count}, size={size}, channels={channels}")
    photos = _base_photos()
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, channels), np.uint8)
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        short = min(h, w)
        if i < len(photos):
            side, top, left, flip = short, (h - short) // 2, (w - short) // 2, False
        else:
            side = int(short * rng.uniform(0.5, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            flip = bool(rng.integers(0, 2))
        crop = img[top:top + side, left:left + side]
        if flip:
            crop = crop[:, ::-1]
        small = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        if channels == 1:
            small = small @ np.array([0.299, 0.587, 0.114])
            small = small[..., None]
        out[i] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return out


def normalize(images: np.ndarray, spec, dtype: Optional[str] = "float32") -> np.ndarray:
    """(x - input_mean) / input_std with the spec's constants (on the 0-255 scale)."""
    mean = np.asarray(spec.input_mean, np.float32)
    std = np.asarray(spec.input_std, np.float32)
    return ((np.asarray(images, np.float32) - mean) / std).astype(dtype)
