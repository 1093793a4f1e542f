"""Top-1 / top-5 of a classifier on ImageNet-like data, with its reference's preprocessing.

``evaluate`` takes a registered model or spec (optionally with weights to import), a saved Keras
model, or a ``.tflite`` file (run by the LiteRT interpreter as deployed: an int8 model gets
quantised int8 inputs). Images come from a prepared TFDS dataset (``imagenet2012``; labels as
TFDS numbers them) or an image folder (``DIR/<class>/*``, classes numbered in sorted order, as
torchvision's ``ImageFolder`` does: ImageNet's synset folders give ImageNet's numbering). The
spec (a saved model's ``x.spec.json`` sidecar, or ``spec=``) gives the input mean/std and the
family's reference preprocessing (``ran_keras.data.eval_preprocessing``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ran_keras.data import eval_preprocessing as prep
from ran_keras.errors import RanError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class EvalError(RanError):
    """Bad evaluation input: no data, no normalisation for a saved model, classes that do not fit."""


@dataclass
class Data:
    """Encoded images and labels, in a fixed order."""
    description: str
    num_classes: int
    count: Optional[int]
    records: Callable[[], Iterator[Tuple[bytes, int]]]


def folder_data(root) -> Data:
    """``root/<class>/*`` (classes in sorted order)."""
    root = Path(root)
    if not root.is_dir():
        raise EvalError(f"image folder {str(root)!r} is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise EvalError(f"image folder {str(root)!r} has no images in class sub-folders (DIR/<class>/*.jpg; "
                        f"formats {', '.join(IMAGE_SUFFIXES)})")
    return Data(f"{root}: {len(classes)} classes, {len(items)} images", len(classes), len(items),
                lambda: ((p.read_bytes(), label) for p, label in items))


def tfds_data(name: str, data_dir: Optional[str] = None, split: Optional[str] = None) -> Data:
    """A prepared TFDS classification dataset (nothing is downloaded); default split validation/test."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise EvalError(f"unknown TFDS dataset {name!r}; pass a prepared TFDS name such as imagenet2012, "
                        "or --image_folder") from None
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    splits = list(info.splits)
    split = split or next((s for s in ("validation", "test") if s in splits), "validation")
    if splits and split.split("[")[0] not in splits:
        raise EvalError(f"{name} has no split {split!r}; it has {', '.join(splits)}")

    def dataset():
        return builder.as_dataset(split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})

    try:
        dataset()
    except AssertionError:  # how TFDS says a dataset is not prepared
        raise EvalError(f"TFDS dataset {name!r} is not prepared in {data_dir or 'the default data_dir'}; for "
                        "imagenet2012 see `ran train --help` (--manual_dir with the ILSVRC2012 tar files)") from None

    def records():
        for ex in tfds.as_numpy(dataset()):
            yield bytes(ex[image_key]), int(ex[label_key])

    try:
        count = info.splits[split].num_examples
    except (KeyError, ValueError):
        count = None
    return Data(f"TFDS {name} ({split})", info.features[label_key].num_classes, count, records)


class _Runner:
    """Scores for a batch of normalised float images: a Keras model or a TFLite interpreter."""

    def __init__(self, keras_model=None, tflite: Optional[bytes] = None):
        self.keras_model, self.interp = keras_model, None
        if tflite is not None:
            from ran_keras.export.litert import interpreter
            self.interp = interpreter(tflite)
            self.inp, self.out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]

    @property
    def input_size(self) -> Tuple[int, int]:
        shape = self.inp["shape"] if self.interp is not None else self.keras_model.input_shape
        return int(shape[1]), int(shape[2])

    @property
    def classes(self) -> int:
        return int(self.out["shape"][-1]) if self.interp is not None else int(self.keras_model.output_shape[-1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.interp is None:
            return np.asarray(self.keras_model(images, training=False))
        return np.stack([self._one(x[None]) for x in images])

    def _one(self, x):
        if self.inp["dtype"] in (np.int8, np.uint8):
            scale, zero = self.inp["quantization"]
            lim = np.iinfo(self.inp["dtype"])
            x = np.clip(np.rint(x / scale + zero), lim.min, lim.max).astype(self.inp["dtype"])
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"]).reshape(-1)
        if self.out["dtype"] in (np.int8, np.uint8, np.int16):
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float64) - zero) * scale
        return y


def resolve(model, *, weights=None, spec=None, input_size: Optional[int] = None) -> Tuple[_Runner, Any, str]:
    """(runner, spec or None, kind) for a model argument (see the module docstring)."""
    from ran_keras.export.pipeline import resolve_model_arg
    from ran_keras.spec import load_sidecar
    from ran_keras import registry
    ref = resolve_model_arg(model, command="ran eval", tflite=True)
    given = registry.resolve_spec(spec) if spec is not None else None
    if ref.origin in ("tflite", "keras"):
        if weights is not None:
            raise EvalError(f"--weights imports into a registered model or spec, not into {ref.path}")
        side = given or load_sidecar(ref.path)
        if ref.origin == "tflite":
            from ran_keras.export.flatbuffer import inspect_tflite
            inspect_tflite(ref.path)  # a damaged file is named here, not deep in the interpreter
            return _Runner(tflite=ref.path.read_bytes()), side, "tflite"
        from ran_keras.builder import load_model
        return _Runner(load_model(ref.path)), side, "keras"
    from ran_keras.builder import build_model
    from ran_keras.weights import importer
    net, classes = ref.spec, 1000
    if weights is not None and importer.is_foreign_weights(weights):
        weights = importer.read_source(weights, model=net.name)
        net, classes = importer.adapt_spec(net, weights), weights.classes or classes
    size = input_size or net.input_size
    keras_model = build_model(net, (size, size, net.input_channels), classes=classes, weights=weights, seed=0)
    return _Runner(keras_model), net, "keras"


def evaluate(model, data: Data, *, weights=None, spec=None, preprocessing: Optional[str] = None,
             mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
             input_size: Optional[int] = None, limit: Optional[int] = None, batch_size: int = 32,
             threads: int = 2, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Top-1/top-5 accuracy of ``model`` on ``data``; returns a JSON-able report."""
    runner, net, kind = resolve(model, weights=weights, spec=spec, input_size=input_size)
    if (mean is None or std is None) and net is None:
        raise EvalError(f"{model}: no spec beside it (x.spec.json) to say its input normalisation; pass --spec "
                        "MODEL_OR_JSON, or --input-mean and --input-std")
    norm_mean = np.asarray(mean if mean is not None else net.input_mean, np.float32)
    norm_std = np.asarray(std if std is not None else net.input_std, np.float32)
    if preprocessing is None and net is None:
        raise EvalError(f"{model}: no spec to choose its reference preprocessing; pass --preprocessing "
                        f"({', '.join(prep.RECIPES)}) or --spec")
    recipe = prep.get_recipe(preprocessing) if preprocessing else prep.recipe_for(net)
    h, w = runner.input_size
    if h != w or h is None:
        raise EvalError(f"{model} has a {h}x{w} input; evaluation uses square crops of a fixed size")
    if data.num_classes > runner.classes:
        raise EvalError(f"{data.description} has {data.num_classes} classes but {model} outputs {runner.classes}")
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    top1 = top5 = seen = 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for images, labels in _batches(data, h, recipe, batch_size, limit, pool):
            scores = runner((images - norm_mean) / norm_std)
            order = np.argsort(-scores, axis=1)[:, :5]
            top1 += int(np.sum(order[:, 0] == labels))
            top5 += int(np.sum(np.any(order == labels[:, None], axis=1)))
            seen += len(labels)
            if seen % (batch_size * 20) == 0:
                say(f"  {seen} images: top-1 {100 * top1 / seen:.2f}%")
    if not seen:
        raise EvalError(f"{data.description}: no images to evaluate")
    return {"model": str(model), "kind": kind, "spec": getattr(net, "name", None), "data": data.description,
            "images": seen, "preprocessing": recipe.name, "input_size": h,
            "input_mean": norm_mean.tolist(), "input_std": norm_std.tolist(),
            "top1": top1 / seen, "top5": top5 / seen if runner.classes >= 5 else None,
            "seconds": round(time.perf_counter() - t0, 2)}


def _batches(data: Data, size: int, recipe, batch_size: int, limit: Optional[int], pool):
    batch: List[Tuple[bytes, int]] = []
    for n, record in enumerate(data.records()):
        if limit is not None and n >= limit:
            break
        batch.append(record)
        if len(batch) == batch_size:
            yield _prepare(batch, size, recipe, pool)
            batch = []
    if batch:
        yield _prepare(batch, size, recipe, pool)


def _prepare(batch, size, recipe, pool):
    images = list(pool.map(lambda r: prep.preprocess(r[0], size, recipe), batch))
    return np.stack(images), np.asarray([r[1] for r in batch])


__all__ = ["Data", "EvalError", "evaluate", "folder_data", "tfds_data", "resolve"]
