"""Detection input: readers for Pascal-VOC XML, COCO-format JSON and TFDS ``coco/2017``, and the
training / evaluation pipeline (resize, flip, normalise, padded batches).

Every reader gives a ``DetectionSource`` whose ``dataset()`` yields one dict per image:
``image`` uint8 (H, W, 3), ``boxes`` float32 (N, 4) xyxy in original pixels, ``classes`` int32
(N,) numbered 1..K (0 is background), ``is_crowd`` bool (N,), ``area`` float32 (N,) (COCO's
annotation area, else the box area), ``image_id`` int64 and ``original_size`` int32 (height,
width). Nothing is downloaded: TFDS must already hold the prepared dataset.

``detection_pipeline`` follows torchvision's GeneralizedRCNNTransform as Arm's detector uses it:
resize so the short side is ``min_size`` unless the long side would pass ``max_size``, bilinear,
no antialiasing; horizontal flip with probability 0.5 in training (seeded per example);
ImageNet mean/std on 0-255 pixels; batches padded with zeros (the mean colour) to a multiple of
32. Crowd boxes stay in every batch (the evaluator needs them) but are marked untrainable.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ran_keras.backend import tf
from ran_keras.data.photos import TF_IMAGE_SUFFIXES
from ran_keras.tasks.detection.boxes import clip_to_image, resize_boxes
from ran_keras.tasks.detection.errors import DetectionDataError, DetectionError

AUTOTUNE = tf.data.AUTOTUNE
#: ImageNet mean and std (torchvision's, scaled to 0-255 pixels)
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
#: TFDS records (JPEG bytes, about 160 KB each for COCO) in the training shuffle buffer; the file
#: readers shuffle their whole list of paths
TFDS_SHUFFLE_BUFFER = 1024


@dataclass(frozen=True)
class DetectionSource:
    """A detection dataset: ``records()`` yields light records (paths or encoded bytes),
    ``load`` turns one into the decoded dict described in the module docstring."""
    name: str
    class_names: Tuple[str, ...]
    num_examples: Optional[int]
    records: Callable[[], "tf.data.Dataset"]
    load: Callable[[Dict], Dict]
    shuffle_buffer: int
    category_ids: Optional[Tuple[int, ...]] = None

    @property
    def num_classes(self) -> int:
        """K, the foreground classes (a model's class count is K + 1 with background)."""
        return len(self.class_names)

    def dataset(self) -> "tf.data.Dataset":
        """Every image once, in the source's order, decoded."""
        return self.records().map(self.load, num_parallel_calls=AUTOTUNE, deterministic=True)


# --- readers ------------------------------------------------------------------------------------

def voc_source(annotations: Union[str, Path, Sequence[Union[str, Path]]], image_dir: Union[str, Path, None] = None,
               class_names: Optional[Sequence[str]] = None) -> DetectionSource:
    """Pascal-VOC XML files: a folder of ``*.xml`` or a list of files; images in ``image_dir``
    (default: beside each XML), found by the XML's ``<filename>`` or else by the XML's own name
    with a suffix TensorFlow decodes. Classes are ``class_names`` in that order, default every
    name found, sorted. Coordinates are taken as written; ``<difficult>1`` boxes become crowd
    boxes, so evaluation ignores them as VOC's does and training skips them.
    """
    paths = _xml_paths(annotations)
    parsed = [_parse_voc(p, image_dir) for p in paths]
    found = sorted({name for _, objects in parsed for name, *_ in objects})
    names = tuple(class_names) if class_names is not None else tuple(found)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DetectionDataError(f"VOC annotations: class(es) {', '.join(map(repr, unknown))} are not in "
                                 f"class_names ({', '.join(map(repr, names))}); pass every class, or "
                                 f"class_names=None to take all names found")
    index = {n: i + 1 for i, n in enumerate(names)}
    per_image = []
    for image_id, (image_path, objects) in enumerate(parsed):
        boxes = np.array([o[1] for o in objects], np.float32).reshape(-1, 4)
        per_image.append((str(image_path), image_id, boxes, [index[o[0]] for o in objects], [o[2] for o in objects],
                          (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    return _file_source(f"voc:{Path(paths[0]).parent}", names, per_image)


def coco_json_source(annotation_file: Union[str, Path], image_dir: Union[str, Path]) -> DetectionSource:
    """A COCO-format instances JSON and its image folder. Categories sorted by id become classes
    1..K (``category_ids`` maps back); boxes (x, y, w, h) become xyxy; images without annotations
    are kept."""
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
        images, categories = data["images"], sorted(data["categories"], key=lambda c: c["id"])
        annotations = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DetectionDataError(f"COCO annotations {str(annotation_file)!r}: cannot read it ({err}); expected "
                                 f"a COCO instances JSON with 'images', 'categories' and 'annotations'") from None
    index = {c["id"]: i + 1 for i, c in enumerate(categories)}
    by_image: Dict[int, List[dict]] = {}
    for ann in annotations:
        if ann.get("category_id") not in index:
            raise DetectionDataError(f"COCO annotations {str(annotation_file)!r}: annotation {ann.get('id')} has "
                                     f"category_id {ann.get('category_id')!r}, which is not among the categories "
                                     f"({', '.join(str(c) for c in index)})")
        by_image.setdefault(ann["image_id"], []).append(ann)
    missing = [img["file_name"] for img in images if not (image_dir / img["file_name"]).is_file()]
    if missing:
        raise DetectionDataError(f"COCO images: {len(missing)} of {len(images)} listed in {annotation_file.name} "
                                 f"are not in {str(image_dir)!r} (e.g. {missing[0]!r})")
    per_image = []
    for img in sorted(images, key=lambda i: i["id"]):
        anns = by_image.get(img["id"], [])
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        area = [float(a.get("area", w * h)) for a, (w, h) in zip(anns, xywh[:, 2:])]
        per_image.append((str(image_dir / img["file_name"]), img["id"], boxes, [index[a["category_id"]] for a in anns],
                          [bool(a.get("iscrowd", 0)) for a in anns], area))
    return _file_source(f"coco_json:{annotation_file.name}", tuple(c.get("name", str(c["id"])) for c in categories),
                        per_image, category_ids=tuple(c["id"] for c in categories))


def tfds_coco_source(split: str = "validation", data_dir: Optional[str] = None,
                     name: str = "coco/2017") -> DetectionSource:
    """TFDS ``coco/2017`` (80 classes, labels + 1) from a ``data_dir`` where it is prepared.

    TFDS stores boxes normalised and areas as integers; boxes come back in pixels, areas as the
    stored integers. Nothing is downloaded.
    """
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DetectionDataError(f"TFDS dataset {name!r} does not exist; the COCO detection dataset is "
                                 f"'coco/2017'") from None
    splits = dict(builder.info.splits)
    if splits and split.split("[")[0] not in splits:
        raise DetectionDataError(f"TFDS {name}: no split {split!r}; it has {', '.join(splits)}")
    decoders = {"image": tfds.decode.SkipDecoding()}

    def records():
        return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)

    try:
        records()
    except AssertionError:
        raise DetectionDataError(
            f"TFDS {name} is not prepared in {data_dir or 'the default data_dir (~/tensorflow_datasets)'}. "
            f"Prepare it once where it can download (about 25 GB from cocodataset.org) with `tfds build {name} "
            f"--data_dir=DIR`, then pass data_dir=DIR") from None
    try:
        count = splits[split].num_examples if split in splits else None
    except (KeyError, ValueError):
        count = None
    return DetectionSource(f"tfds:{name}:{split}", tuple(builder.info.features["objects"]["label"].names), count,
                           records, _load_tfds_coco, TFDS_SHUFFLE_BUFFER)


def _xml_paths(annotations) -> List[Path]:
    if isinstance(annotations, (str, Path)):
        folder = Path(annotations)
        if not folder.is_dir():
            raise DetectionDataError(f"VOC annotations: {str(folder)!r} is not a folder; pass a folder of .xml "
                                     f"files or a list of .xml files")
        paths = sorted(folder.glob("*.xml"))
        if not paths:
            raise DetectionDataError(f"VOC annotations: no .xml files in {str(folder)!r}")
        return paths
    paths = [Path(p) for p in annotations]
    if not paths:
        raise DetectionDataError("VOC annotations: the list of .xml files is empty")
    return paths


def _parse_voc(path: Path, image_dir) -> Tuple[Path, List[Tuple[str, List[float], bool]]]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise DetectionDataError(f"VOC annotation {str(path)!r}: cannot read it ({err})") from None
    objects = []
    for i, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            name = obj.findtext("name").strip()
        except (AttributeError, TypeError, ValueError):
            raise DetectionDataError(f"VOC annotation {str(path)!r}: object {i} needs a <name> and a <bndbox> with "
                                     f"numeric xmin, ymin, xmax, ymax") from None
        objects.append((name, coords, (obj.findtext("difficult") or "0").strip() in ("1", "true")))
    return _find_image(path, root.findtext("filename") or "", Path(image_dir) if image_dir else path.parent), objects


def _find_image(xml: Path, filename: str, folder: Path) -> Path:
    """The XML's <filename> if TensorFlow decodes it, else that stem (or the XML's) with a suffix it does."""
    stems = dict.fromkeys([Path(filename).stem, xml.stem] if filename else [xml.stem])
    candidates = [folder / filename] if filename else []
    candidates += [folder / (s + e) for s in stems for e in TF_IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.suffix.lower() in TF_IMAGE_SUFFIXES and candidate.is_file():
            return candidate
    raise DetectionDataError(f"VOC annotation {str(xml)!r}: no image for it in {str(folder)!r}; looked for "
                             f"{filename or '(no <filename>)'!r} and {'/'.join(stems)} with a suffix TensorFlow "
                             f"decodes ({', '.join(TF_IMAGE_SUFFIXES)})")


def _file_source(name: str, class_names, per_image, category_ids=None) -> DetectionSource:
    """A source over (path, image id, boxes, classes, crowd flags, areas) tuples held in memory."""
    lengths = [len(p[2]) for p in per_image]

    def ragged(values, dtype, inner=()):
        flat = np.concatenate([np.asarray(v, dtype).reshape((-1,) + inner) for v in values])
        return tf.RaggedTensor.from_row_lengths(flat, np.asarray(lengths, np.int64))

    columns = list(zip(*per_image))
    table = {"image_file": list(columns[0]), "image_id": np.asarray(columns[1], np.int64),
             "boxes": ragged(columns[2], np.float32, (4,)), "classes": ragged(columns[3], np.int32),
             "is_crowd": ragged(columns[4], bool), "area": ragged(columns[5], np.float32)}
    return DetectionSource(name, tuple(class_names), len(per_image), lambda: tf.data.Dataset.from_tensor_slices(table),
                           _load_file, max(len(per_image), 1), category_ids)


def _decode(data) -> tf.Tensor:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _load_file(record) -> Dict:
    out = {k: v for k, v in record.items() if k != "image_file"}
    out["image"] = _decode(tf.io.read_file(record["image_file"]))
    out["original_size"] = tf.shape(out["image"])[:2]
    return out


def _load_tfds_coco(example) -> Dict:
    image = _decode(example["image"])
    size = tf.shape(image)[:2]
    hw = tf.cast(tf.tile(size, [2]), tf.float32)
    objects = example["objects"]
    ymin_xmin_ymax_xmax = tf.cast(objects["bbox"], tf.float32) * hw
    boxes = tf.gather(ymin_xmin_ymax_xmax, [1, 0, 3, 2], axis=1)
    return {"image": image, "boxes": boxes, "classes": tf.cast(objects["label"], tf.int32) + 1,
            "is_crowd": tf.cast(objects["is_crowd"], tf.bool), "area": tf.cast(objects["area"], tf.float32),
            "image_id": tf.cast(example["image/id"], tf.int64), "original_size": size}


# --- transform and batching ---------------------------------------------------------------------

def resized_size(size, min_size: int = 800, max_size: int = 1200) -> tf.Tensor:
    """(height, width) after torchvision's resize: scale = min(min_size / short side, max_size /
    long side), each side floor(side * scale), in float64 as torchvision 0.29 computes it (older
    versions used a float32 scale, which can give one pixel less, e.g. 799 for a 480-pixel side)."""
    size = tf.cast(size, tf.float64)
    scale = tf.minimum(min_size / tf.reduce_min(size), max_size / tf.reduce_max(size))
    return tf.cast(tf.floor(size * scale), tf.int32)


def preprocess(record: Dict, training: bool, seed=None, min_size: int = 800, max_size: int = 1200,
               flip: bool = True) -> Dict:
    """One decoded record -> the model's input: resized, (training: maybe flipped), normalised.

    Adds ``image_size`` (resized height, width), ``scale`` (resized / original, per axis),
    ``original_boxes`` (as read), ``box_valid`` (all true; padding makes the false ones) and
    ``box_trainable`` (not crowd, not empty after clipping to the image). ``boxes`` are in the
    resized image's pixels. ``seed`` (2 ints) decides the flip.
    """
    image, boxes = record["image"], tf.cast(record["boxes"], tf.float32)
    original = tf.cast(record["original_size"], tf.int32)
    original_f = tf.cast(original, tf.float32)
    if training:
        boxes = clip_to_image(boxes, original_f)
        if flip:
            if seed is None:
                raise DetectionError("preprocess: training with flip needs a seed (2 ints) for the flip")
            flipped = tf.random.stateless_uniform([], seed) < 0.5
            image = tf.cond(flipped, lambda: image[:, ::-1], lambda: image)
            boxes = tf.cond(flipped, lambda: tf.stack([original_f[1] - boxes[:, 2], boxes[:, 1],
                                                       original_f[1] - boxes[:, 0], boxes[:, 3]], 1), lambda: boxes)
    new_size = resized_size(original, min_size, max_size)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_size, method="bilinear", antialias=False)
    normalised = (resized - tf.constant(MEAN)) / tf.constant(STD)
    boxes = resize_boxes(boxes, original, new_size)
    count = tf.shape(boxes)[0]
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"image": normalised, "image_size": new_size, "original_size": original,
            "scale": tf.cast(new_size, tf.float32) / original_f, "image_id": tf.cast(record["image_id"], tf.int64),
            "boxes": boxes, "original_boxes": tf.cast(record["boxes"], tf.float32),
            "classes": tf.cast(record["classes"], tf.int32), "is_crowd": tf.cast(record["is_crowd"], tf.bool),
            "area": tf.cast(record["area"], tf.float32), "box_valid": tf.ones([count], tf.bool),
            "box_trainable": nonempty & ~tf.cast(record["is_crowd"], tf.bool)}


def batch(dataset: "tf.data.Dataset", batch_size: int, size_divisible: int = 32, max_boxes: Optional[int] = None,
          drop_remainder: bool = False) -> "tf.data.Dataset":
    """Padded batches of ``preprocess`` outputs: images padded with 0 (after normalisation: the
    mean colour) on the bottom/right to the batch's largest size rounded up to
    ``size_divisible``; boxes padded to the batch's largest count, or to ``max_boxes`` (images
    with more keep their first ``max_boxes``)."""
    if batch_size < 1 or size_divisible < 1:
        raise DetectionError(f"batch: batch_size and size_divisible must be positive, got {batch_size}, "
                             f"{size_divisible}")
    shapes = None
    if max_boxes is not None:
        per_box = ("boxes", "original_boxes", "classes", "is_crowd", "area", "box_valid", "box_trainable")
        dataset = dataset.map(lambda ex: {k: (v[:max_boxes] if k in per_box else v) for k, v in ex.items()})
        shapes = {k: ([max_boxes] + list(v.shape[1:]) if k in per_box else v.shape)
                  for k, v in dataset.element_spec.items()}
    dataset = dataset.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=drop_remainder)
    return dataset.map(lambda b: _pad_images(b, size_divisible), num_parallel_calls=AUTOTUNE, deterministic=True)


def _pad_images(batch_dict: Dict, multiple: int) -> Dict:
    image = batch_dict["image"]
    shape = tf.shape(image)
    height = -(-shape[1] // multiple) * multiple
    width = -(-shape[2] // multiple) * multiple
    out = dict(batch_dict)
    out["image"] = tf.pad(image, [[0, 0], [0, height - shape[1]], [0, width - shape[2]], [0, 0]])
    return out


def detection_pipeline(source: DetectionSource, training: bool, batch_size: int, seed: int = 0, epoch: int = 0,
                       min_size: int = 800, max_size: int = 1200, flip: bool = True,
                       skip_images_without_boxes: bool = True, max_boxes: Optional[int] = None,
                       size_divisible: int = 32) -> "tf.data.Dataset":
    """Batches for training (shuffled with (seed, epoch), flipped per example, incomplete last
    batch dropped, images without a trainable box skipped like torchvision's references do) or
    for evaluation (source order, every image, no flip)."""
    if min_size < 1 or max_size < min_size:
        raise DetectionError(f"resize: need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    records = source.records()
    if training:
        records = records.shuffle(source.shuffle_buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
    data = records.map(source.load, num_parallel_calls=AUTOTUNE, deterministic=True).enumerate()
    base = tf.constant([seed, epoch], tf.int64)

    def transform(index, record):
        example_seed = tf.random.experimental.stateless_fold_in(base, index)
        return preprocess(record, training, example_seed, min_size, max_size, flip)

    data = data.map(transform, num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and skip_images_without_boxes:
        data = data.filter(lambda ex: tf.reduce_any(ex["box_trainable"]))
    return batch(data, batch_size, size_divisible, max_boxes, drop_remainder=training).prefetch(AUTOTUNE)
