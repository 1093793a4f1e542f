"""Training and evaluation input pipelines (tf.data) for TFDS datasets, image folders and digits.

Sources:

* ``digits``: scikit-learn's 1797 8x8 handwritten digits (offline, shipped with scikit-learn),
  upsampled to the model's input size; a fixed stratified 20% is held out. For demos and tests.
* any TFDS dataset by name with ``data_dir``. ImageNet is TFDS ``imagenet2012``, which TFDS
  cannot download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder and pass it
  as ``manual_dir``; the dataset is prepared once into ``data_dir``.
* an image folder, one sub-folder per class (``DIR/<class>/*.jpg``), or ``DIR/train`` and a
  held-out ``DIR/val``, ``DIR/validation`` or ``DIR/test`` (the first present) each laid out so.
  TensorFlow decodes the images, so the formats are JPEG, PNG, BMP and GIF.

The training pipeline is deterministic given (seed, epoch): records are shuffled with a per-epoch
seed, each example's augmentation is seeded by its index, so a run resumed mid-epoch skips the
examples it has seen and continues with exactly the batches an uninterrupted run would get.
Decoding is parallel (JPEGs are decoded and cropped in one fused op), followed by
random-resized crop, flip, AutoAugment/RandAugment, normalisation with the spec's input
mean/std, batching, mixup/CutMix and prefetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras.data import augment
from ran_keras.backend import tf
from ran_keras.data.photos import IMAGE_SUFFIXES, TF_IMAGE_SUFFIXES
from ran_keras.errors import close_matches
from ran_keras.train.config import ConfigError, TrainConfig

AUTOTUNE = tf.data.AUTOTUNE
#: held-out sub-folders of an image folder next to DIR/train, in order of preference
HELD_OUT_DIRS = ("val", "validation", "test")

IMAGENET_HOWTO = (
    "TFDS cannot download ImageNet. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
    "from https://image-net.org/download-images (free registration) into one folder, and pass it as "
    "--manual_dir=FOLDER together with --data_dir=WHERE_TFDS_KEEPS_DATASETS; the first run prepares "
    "imagenet2012 there once (hours; about 150 GB), later runs only need --data_dir")


@dataclass
class Source:
    """Where records come from. ``records(seed)`` yields (raw, label) in a seed-shuffled order;
    ``load(raw)`` turns a raw record into image data (encoded bytes if ``encoded``, else uint8)."""
    name: str
    num_classes: int
    train_examples: Optional[int]
    eval_examples: Optional[int]
    encoded: bool
    flip: bool
    records: Callable[[Optional[int]], "tf.data.Dataset"]
    eval_records: Callable[[], "tf.data.Dataset"]
    load: Callable = staticmethod(lambda raw: raw)
    description: str = ""


# --- sources -----------------------------------------------------------------------------------

def digits_arrays(validation_fraction: float = 0.2):
    """scikit-learn digits as uint8 (N, 8, 8, 1) in [0, 255], split stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = data.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(images, labels, test_size=validation_fraction,
                                              stratify=labels, random_state=0)
    return (x_tr, y_tr), (x_ev, y_ev)


def _digits_source(cfg: TrainConfig) -> Source:
    (x_tr, y_tr), (x_ev, y_ev) = digits_arrays(cfg.validation_fraction)

    def records(seed):
        ds = tf.data.Dataset.from_tensor_slices((x_tr, y_tr))
        return ds if seed is None else ds.shuffle(len(x_tr), seed=seed, reshuffle_each_iteration=False)

    return Source("digits", 10, len(x_tr), len(x_ev), encoded=False, flip=False, records=records,
                  eval_records=lambda: tf.data.Dataset.from_tensor_slices((x_ev, y_ev)),
                  description=f"scikit-learn digits: {len(x_tr)} train / {len(x_ev)} held out (stratified)")


def _list_images(folder: Path, classes: Sequence[str]) -> Tuple[List[str], List[int]]:
    paths, labels, other = [], [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        found = [str(p) for p in files if p.suffix.lower() in TF_IMAGE_SUFFIXES]
        other += [p for p in files if p.suffix.lower() not in TF_IMAGE_SUFFIXES]
        paths += found
        labels += [label] * len(found)
    if other:
        kinds = ", ".join(sorted({p.suffix.lower() for p in other}))
        raise ConfigError(f"--image_folder: {len(other)} image(s) under {str(folder)!r} are {kinds} (e.g. "
                          f"{str(other[0])!r}), which TensorFlow cannot decode; training reads "
                          f"{', '.join(TF_IMAGE_SUFFIXES)}: convert them (e.g. to PNG) or move them out")
    return paths, labels


def _folder_layout(root: Path) -> Tuple[Path, Optional[Path]]:
    """(training folder, held-out folder or None): DIR/train + DIR/val|validation|test, else DIR itself."""
    held_out = next((root / n for n in HELD_OUT_DIRS if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        return root / "train", held_out
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    if subdirs and set(subdirs) <= {"train", *HELD_OUT_DIRS}:
        raise ConfigError(f"--image_folder: {str(root)!r} has only the sub-folder(s) "
                          f"{', '.join(n + '/' for n in subdirs)}, which name splits, not classes; accepted: "
                          f"one sub-folder per class (DIR/<class>/*.jpg), or DIR/train/ together with one of "
                          f"{', '.join('DIR/' + n + '/' for n in HELD_OUT_DIRS)}, each with one sub-folder per class")
    return root, None


def _folder_source(cfg: TrainConfig) -> Source:
    root = Path(cfg.image_folder)
    if not root.is_dir():
        raise ConfigError(f"--image_folder: {str(root)!r} is not a folder")
    train_dir, val = _folder_layout(root)
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise ConfigError(f"--image_folder: {str(train_dir)!r} needs one sub-folder per class (at least 2), "
                          f"found {len(classes)}")
    paths, labels = _list_images(train_dir, classes)
    if not paths:
        raise ConfigError(f"--image_folder: no images under {str(train_dir)!r}; training reads the formats "
                          f"TensorFlow decodes: {', '.join(TF_IMAGE_SUFFIXES)}")
    if val is not None:
        ev_paths, ev_labels = _list_images(val, classes)
        if not ev_paths:
            raise ConfigError(f"--image_folder: the held-out split {str(val)!r} has no images in the training "
                              f"classes' sub-folders ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    else:  # hold out a fixed fraction of every class
        rng = np.random.default_rng(0)
        tr, ev = [], []
        labels_np = np.asarray(labels)
        for c in range(len(classes)):
            idx = rng.permutation(np.flatnonzero(labels_np == c))
            n_ev = int(round(len(idx) * cfg.validation_fraction))
            ev += list(idx[:n_ev])
            tr += list(idx[n_ev:])
        ev_paths, ev_labels = [paths[i] for i in sorted(ev)], [labels[i] for i in sorted(ev)]
        paths, labels = [paths[i] for i in sorted(tr)], [labels[i] for i in sorted(tr)]

    def records(seed):
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int64)))
        return ds if seed is None else ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)

    return Source(f"folder:{root.name}", len(classes), len(paths), len(ev_paths), encoded=True, flip=True,
                  records=records, load=tf.io.read_file,
                  eval_records=lambda: tf.data.Dataset.from_tensor_slices(
                      (ev_paths, np.asarray(ev_labels, np.int64))),
                  description=f"{root}: {len(classes)} classes, {len(paths)} train / {len(ev_paths)} held out"
                              + (f" ({val.name}/)" if val is not None else ""))


def _tfds_builder(name: str, data_dir: Optional[str]):
    import tensorflow_datasets as tfds
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = ["digits"] + list(tfds.list_builders())
        raise ConfigError(f"--dataset: unknown dataset {name!r}{close_matches(name, known)}; accepted: 'digits' "
                          "(offline), a TFDS name such as imagenet2012 or cifar10, or use --image_folder") from None


def _not_prepared(name: str, data_dir: Optional[str]) -> ConfigError:
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
    if name.split(":")[0].split("/")[0] == "imagenet2012":
        return ConfigError(f"imagenet2012 is not prepared in {where}. {IMAGENET_HOWTO}")
    return ConfigError(f"TFDS dataset {name!r} is not prepared in {where}; pass --download to let TFDS "
                       f"download and prepare it, or prepare it beforehand with `tfds build {name} "
                       f"--data_dir=DIR`")


def _tfds_source(cfg: TrainConfig) -> Source:
    import tensorflow_datasets as tfds
    builder = _tfds_builder(cfg.dataset, cfg.data_dir)
    if (cfg.manual_dir or cfg.download) and not builder.is_prepared():
        if cfg.manual_dir and not (Path(cfg.manual_dir).is_dir() and any(Path(cfg.manual_dir).iterdir())):
            how = IMAGENET_HOWTO if cfg.dataset.startswith("imagenet2012") else "put the dataset's raw files there"
            raise ConfigError(f"--manual_dir: {cfg.manual_dir!r} does not exist or is empty. {how}")
        config = tfds.download.DownloadConfig(manual_dir=cfg.manual_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except AssertionError as err:   # TFDS reports a missing/incomplete manual_dir this way
            raise ConfigError(f"could not prepare {cfg.dataset!r} from --manual_dir={cfg.manual_dir}: "
                              f"{str(err).splitlines()[0]}. {IMAGENET_HOWTO}") from None
    info = builder.info
    keys = info.supervised_keys or ("image", "label")
    image_key, label_key = keys[0], keys[1]
    try:
        num_classes = info.features[label_key].num_classes
    except (KeyError, AttributeError):
        raise ConfigError(f"--dataset: {cfg.dataset!r} has no class label feature {label_key!r}; "
                          "image classification datasets only") from None
    splits = dict(info.splits)
    eval_split = cfg.eval_split or next((s for s in ("validation", "test") if s in splits), "validation")
    for flag, split in (("train_split", cfg.train_split), ("eval_split", eval_split)):
        if splits and split.split("[")[0] not in splits:
            raise ConfigError(f"--{flag}: {cfg.dataset} has no split {split!r}; it has {', '.join(splits)}")

    def count(split):
        try:
            return info.splits[split].num_examples
        except (KeyError, ValueError):
            return None

    decoders = {image_key: tfds.decode.SkipDecoding()}

    def load(split, seed):
        read = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False) if seed is not None else None
        ds = builder.as_dataset(split=split, shuffle_files=seed is not None, decoders=decoders,
                                read_config=read)
        return ds.map(lambda ex: (ex[image_key], ex[label_key]), num_parallel_calls=AUTOTUNE)

    try:
        load(cfg.train_split, 0)
    except AssertionError:
        raise _not_prepared(cfg.dataset, cfg.data_dir) from None

    def records(seed):
        ds = load(cfg.train_split, seed)
        return ds if seed is None else ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)

    return Source(cfg.dataset, num_classes, count(cfg.train_split), count(eval_split), encoded=True, flip=True,
                  records=records, eval_records=lambda: load(eval_split, None),
                  description=f"TFDS {cfg.dataset} ({cfg.train_split} / {eval_split})")


def load_source(cfg: TrainConfig) -> Source:
    """The configured source; ConfigError (with how to fix it) if it cannot be used."""
    if cfg.image_folder:
        return _folder_source(cfg)
    if not cfg.dataset:
        raise ConfigError("no data: pass --dataset (digits, or a TFDS name such as imagenet2012) or "
                          "--image_folder")
    if cfg.dataset == "digits":
        return _digits_source(cfg)
    return _tfds_source(cfg)


# --- per-example preprocessing -------------------------------------------------------------------

def _crop_window(shape, seed, min_scale: float):
    """A random-resized-crop window (offset_y, offset_x, h, w) of an image of ``shape`` (h, w, c)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(shape, tf.int32), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(min_scale, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _center_window(shape, fraction: float):
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    side = tf.cast(fraction * tf.minimum(h, w), tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(tf.cast(h, tf.int32) - side) // 2, (tf.cast(w, tf.int32) - side) // 2, side, side])


def _decode_window(data, channels: int, window_fn: Callable):
    """Decode encoded bytes cropped to ``window_fn(shape)``; JPEGs in one fused op."""
    def jpeg():
        shape = tf.image.extract_jpeg_shape(data)
        return tf.io.decode_and_crop_jpeg(data, window_fn(shape), channels=channels)

    def other():
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        win = window_fn(tf.shape(image))
        return tf.image.crop_to_bounding_box(image, win[0], win[1], win[2], win[3])

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _crop_array(image, window_fn: Callable, channels: int):
    win = window_fn(tf.shape(image))
    image = tf.image.crop_to_bounding_box(image, win[0], win[1], win[2], win[3])
    if image.shape[-1] == 1 and channels == 3:
        image = tf.tile(image, [1, 1, 3])
    return image


class Pipeline:
    """Builds the train/eval tf.data pipelines of one run (source + config + input geometry)."""

    def __init__(self, source: Source, cfg: TrainConfig, *, image_size: int, channels: int,
                 mean: Sequence[float], std: Sequence[float], num_classes: int, global_batch: int):
        if cfg.augment != "none" and channels != 3:
            raise ConfigError(f"--augment={cfg.augment} needs 3-channel input; the model takes {channels}")
        self.source, self.cfg = source, cfg
        self.size, self.channels, self.classes = image_size, channels, num_classes
        self.mean = tf.constant(np.asarray(mean, np.float32))
        self.std = tf.constant(np.asarray(std, np.float32))
        self.batch = global_batch
        self.flip = source.flip if cfg.random_flip is None else cfg.random_flip
        # traced once and reused by every epoch's dataset (AutoAugment's graph is slow to trace)
        self._train_example = tf.function(self.train_example)

    def _image(self, raw, window_fn):
        data = self.source.load(raw)
        if self.source.encoded:
            image = _decode_window(data, self.channels, window_fn)
        else:
            image = _crop_array(data, window_fn, self.channels)
        image = tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size], method="bilinear")
        return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [self.size, self.size, self.channels])

    def _normalize(self, image):
        return (image - self.mean) / self.std

    def _label(self, label):
        return tf.one_hot(tf.cast(label, tf.int32), self.classes, dtype=tf.float32)

    def train_example(self, raw, label, seed):
        crop_seed, flip_seed, aug_seed = augment.split_seed(seed, 3)
        image = self._image(raw, lambda shape: _crop_window(shape, crop_seed, self.cfg.crop_min_scale))
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if self.cfg.augment == "autoaugment":
            image = augment.autoaugment(image, aug_seed)
        elif self.cfg.augment == "randaugment":
            image = augment.randaugment(image, aug_seed, self.cfg.randaugment_layers,
                                        self.cfg.randaugment_magnitude, self.cfg.randaugment_magnitude_std)
        return self._normalize(image), self._label(label)

    def eval_example(self, raw, label):
        frac = self.cfg.eval_crop_fraction if self.source.encoded else 1.0
        image = self._image(raw, lambda shape: _center_window(shape, frac))
        return self._normalize(image), self._label(label)

    def epoch_seed(self, epoch: int) -> int:
        return (self.cfg.seed * 1_000_003 + epoch * 7919) % (2 ** 31 - 1)

    def train(self, epoch: int, skip_examples: int = 0) -> "tf.data.Dataset":
        """Epoch ``epoch``'s batches (global batch), the first ``skip_examples`` examples left out.

        Endless (the records repeat in the same order); the trainer takes steps_per_epoch batches.
        """
        seed = self.epoch_seed(epoch)
        ds = self.source.records(seed).repeat().enumerate()   # an epoch is steps_per_epoch batches
        if skip_examples:
            ds = ds.skip(skip_examples)

        def prep(index, record):
            raw, label = record
            image, onehot = self._train_example(raw, label, tf.stack([tf.constant(seed, tf.int64), index]))
            return index, image, onehot

        ds = ds.map(prep, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(self.batch, drop_remainder=True)
        cfg = self.cfg

        def mix(index, images, labels):
            if cfg.mixup > 0 or cfg.cutmix > 0:
                mix_seed = tf.stack([tf.constant(seed + 1, tf.int64), index[0]])
                images, labels = augment.mix_batch(images, labels, mix_seed, cfg.mixup, cfg.cutmix,
                                                   cfg.mix_switch_prob)
            return images, labels

        ds = ds.map(mix, num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.with_options(_options()).prefetch(AUTOTUNE)

    def eval(self) -> "tf.data.Dataset":
        ds = self.source.eval_records().map(self.eval_example, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(self.batch)
        if self.cfg.eval_steps:
            ds = ds.take(self.cfg.eval_steps)
        return ds.with_options(_options()).prefetch(AUTOTUNE)


def _options():
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options


