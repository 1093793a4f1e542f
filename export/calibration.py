"""Representative data for int8 calibration: where the images come from, and how they are prepared.

A source is a short string, recorded in every report:

* ``photos`` (default): the colour photos that ship with scikit-image and scikit-learn
  (``ran_keras.data.photos.offline_photos``; seeded crops once the originals are used up);
* ``random``: seeded uniform random pixels (fast; calibrates ranges poorly);
* ``folder:PATH`` (or just an existing directory): image files in PATH, sorted by name;
* ``tfds:NAME[:SPLIT]``: a TensorFlow Datasets dataset that is already prepared locally (nothing
  is downloaded); SPLIT defaults to ``train``.

Images are centre-cropped to a square, resized to the model's input size and normalised with the
model's input mean/std (``ran_keras.data.photos.normalize``), exactly as at inference time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras.data import photos
from ran_keras.export import settings
from ran_keras.export.settings import Source, parse_source
from ran_keras.export.errors import CalibrationError

IMAGE_SUFFIXES = photos.IMAGE_SUFFIXES
DEFAULT_SOURCE = settings.CALIBRATION_SOURCE
DEFAULT_COUNT = settings.CALIBRATION_COUNT


def center_crop_resize(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Square centre crop, bilinear resize to (size, size), uint8 with ``channels`` channels."""
    from skimage.transform import resize
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 4:
        img = img[..., :3]
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = img[top:top + side, left:left + side].astype(np.float64)
    small = resize(crop, (size, size), order=1, anti_aliasing=side > size, preserve_range=True)
    if channels == 1 and small.shape[-1] == 3:
        small = (small @ np.array([0.299, 0.587, 0.114]))[..., None]
    elif channels == 3 and small.shape[-1] == 1:
        small = np.repeat(small, 3, axis=-1)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def _image_files(path: str) -> List[Path]:
    """The image files of a calibration folder, sorted by name (at least one)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {path!r} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationError(f"calibration folder {path!r} has no image files "
                               f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def fingerprint(source, count: int) -> Optional[List[List[str]]]:
    """[name, sha256] of the images a folder source gives for ``count`` samples (for cache keys:
    the source string alone does not change when the images do); None for the other sources."""
    src = source if isinstance(source, Source) else parse_source(source)
    if src.kind != "folder":
        return None
    return [[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in _image_files(src.path)[:count]]


def _folder_images(path: str, count: int, size: int, channels: int) -> Tuple[np.ndarray, Dict[str, Any]]:
    from PIL import Image
    files = _image_files(path)
    images = []
    for p in files[:count]:
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        except OSError as err:
            raise CalibrationError(f"cannot read calibration image {str(p)!r}: {err}") from None
        images.append(center_crop_resize(arr, size, channels))
    return np.stack(images), {"files": [p.name for p in files[:count]], "available": len(files)}


def _tfds_images(name: str, split: str, count: int, size: int, channels: int,
                 data_dir: Optional[str]) -> Tuple[np.ndarray, Dict[str, Any]]:
    import ran_keras.backend  # noqa: F401  (tf_keras before tfds imports TensorFlow)
    import tensorflow_datasets as tfds
    try:
        ds = tfds.load(name, split=split, download=False, data_dir=data_dir, shuffle_files=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise CalibrationError(f"tfds has no dataset named {name!r}; see `tfds.list_builders()`") from None
    except AssertionError as err:
        raise CalibrationError(
            f"tfds dataset {name!r} is not prepared in {data_dir or 'the default TFDS data_dir'} "
            f"(ran-keras never downloads data; prepare it first, e.g. `tfds build {name}`): {err}") from None
    except ValueError as err:
        raise CalibrationError(f"tfds dataset {name!r}: bad split {split!r}: {err}") from None
    key = None
    for k, spec in ds.element_spec.items() if isinstance(ds.element_spec, dict) else ():
        if len(spec.shape) == 3 and spec.dtype.name == "uint8":
            key = k
            break
    if key is None:
        raise CalibrationError(f"tfds dataset {name!r} has no uint8 image feature (HxWxC); "
                               f"features: {ds.element_spec}")
    images = [center_crop_resize(ex[key], size, channels) for ex in tfds.as_numpy(ds.take(count))]
    if not images:
        raise CalibrationError(f"tfds dataset {name!r} split {split!r} is empty")
    return np.stack(images), {"feature": key}


@functools.lru_cache(maxsize=8)
def _generated(kind: str, count: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Photos / random images, memoised: a worker exporting several models decodes the photos once."""
    if kind == "photos":
        return photos.offline_photos(count, size, channels, seed)
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def load_images(source, count: int, size: int, channels: int = 3, seed: int = 0,
                data_dir: Optional[str] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """``count`` uint8 images (N, size, size, channels) from ``source`` and a description of them.

    Folder and tfds sources give fewer images when they have fewer; the description says how
    many were used.
    """
    src = source if isinstance(source, Source) else parse_source(source)
    if count < 1 or size < 1:
        raise CalibrationError(f"calibration needs count >= 1 and size >= 1, got count={count}, size={size}")
    extra: Dict[str, Any] = {}
    if src.kind in ("photos", "random"):
        images = _generated(src.kind, count, size, channels, seed).copy()
        extra["detail"] = ("scikit-image/scikit-learn photos (centre crops, then seeded random crops)"
                           if src.kind == "photos" else "seeded uniform random pixels")
    elif src.kind == "folder":
        images, extra = _folder_images(src.path, count, size, channels)
    else:
        images, extra = _tfds_images(src.name, src.split, count, size, channels, data_dir)
    info = {"source": str(src), "kind": src.kind, "count": int(len(images)), "size": size, "seed": seed}
    info.update(extra)
    if len(images) < count:
        info["requested"] = count
        warnings.warn(f"calibration source {src} gave {len(images)} image(s), fewer than the {count} asked for "
                      "(--samples); the int8 ranges come from those only", CalibrationWarning, stacklevel=2)
    return images, info


class CalibrationWarning(UserWarning):
    """The calibration source had fewer images than asked for."""


def normalizer(spec=None, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
    """An object with input_mean/input_std for ``ran_keras.data.photos.normalize``: the spec's, or given."""
    if mean is not None or std is not None or spec is None:
        return SimpleNamespace(input_mean=tuple(mean if mean is not None else (127.5,)),
                               input_std=tuple(std if std is not None else (127.5,)))
    return spec


def calibration_set(source=DEFAULT_SOURCE, count: int = DEFAULT_COUNT, size: int = 224, *, spec=None,
                    mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                    channels: int = 3, seed: int = 0,
                    data_dir: Optional[str] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Normalised float32 calibration images and their description (source, count, mean/std)."""
    norm = normalizer(spec, mean, std)
    _check_normalisation(norm)
    images, info = load_images(source, count, size, channels, seed, data_dir)
    info["input_mean"], info["input_std"] = list(norm.input_mean), list(norm.input_std)
    with np.errstate(over="ignore", invalid="ignore"):
        x = photos.normalize(images, norm)
    if not np.all(np.isfinite(x)):
        raise CalibrationError(f"input mean {list(norm.input_mean)} / std {list(norm.input_std)} turn the calibration "
                               "images into inf/NaN (float32 overflow); the std must be a positive number on the "
                               "0-255 pixel scale (e.g. 127.5, or 58.4,57.1,57.4)")
    return x, info


def _check_normalisation(norm) -> None:
    for name in ("input_mean", "input_std"):
        values = list(getattr(norm, name))
        if not values or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
            raise CalibrationError(f"{name.replace('_', ' ')} must be finite numbers, got {values}")
    if not all(v > 0 for v in norm.input_std):
        raise CalibrationError(f"input std must be positive (the input is divided by it), got {list(norm.input_std)}")
