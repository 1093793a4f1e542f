"""The trained weights Arm published for RANs, as data, and checks that a local file is one of them.

The files live in ARM-software/ML-restructurable-activation-networks under ``pretrained/`` as git-lfs
objects (``git lfs pull`` fetches them); sizes and sha256 digests are those of the git-lfs pointers.
Nothing here downloads anything.

Layouts (see ``pth``, ``tf_ckpt`` and ``keymaps``):

* RAN-e-C / RAN-e-GT: TF checkpoints written by Keras ``save_weights`` (``layer_with_weights-N/...``
  keys, RMSprop slots), plus the ``checkpoint`` index file naming ``model.ckpt-0350``.
* RAN-i-T/S/B: ``torch.save`` dicts ``{model, model_ema, optimizer, epoch, scaler, args}`` with
  facebookresearch ConvNeXt state dicts. Each file is about 16 bytes per parameter (model, model_ema and
  AdamW's two moments in float32): 332.6 MB / 20.76M for T, 463.3 MB / 28.93M for S, 846.8 MB / 52.89M for B.
* RAN-i-S detector: ``torch.save`` dict from the torchvision detection recipe (``model``, ``optimizer``,
  ``lr_scheduler``, ``args``, ``epoch``); state dict keys ``backbone.downsample_{i}.{0,1}.*``,
  ``backbone.stage_{i}.{j}.*``, ``rpn.head.*``, ``roi_heads.box_head.fc1/fc2.*``,
  ``roi_heads.box_predictor.{class_scores,bbox_predictor}.*``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ran_keras.weights.errors import WeightsError

REPOSITORY = "ARM-software/ML-restructurable-activation-networks"
BRANCH = "main"
_E = "pretrained/RAN_e_pretrained"
_I = "pretrained/RAN_i_pretrained"
_CHECKPOINT_FILE = ("checkpoint", 87, "db50f100c8195496daa5764e2091b6f02a517ea73f4610a9c4ebd1491913e536")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PublishedFile:
    """One published file: its path in the repository, size in bytes and sha256."""
    path: str
    bytes: int
    sha256: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        """The file's page on GitHub."""
        return f"https://github.com/{REPOSITORY}/blob/{BRANCH}/{self.path}"

    @property
    def media_url(self) -> str:
        """Where GitHub serves the git-lfs object itself."""
        return f"https://media.githubusercontent.com/media/{REPOSITORY}/{BRANCH}/{self.path}"


@dataclass(frozen=True)
class Published:
    """A published set of weights: which of our models it belongs to, its files and reported top-1."""
    name: str
    model: str
    files: Tuple[PublishedFile, ...]
    top1: Optional[float]
    layout: str
    note: str = ""


def _files(folder: str, *entries: Tuple[str, int, str]) -> Tuple[PublishedFile, ...]:
    return tuple(PublishedFile(f"{folder}/{name}", size, digest) for name, size, digest in entries)


PUBLISHED: Tuple[Published, ...] = (
    Published("RAN-e-C", "ran_e_c", _files(
        f"{_E}/RAN-e-C",
        ("model.ckpt-0350.data-00000-of-00001", 55871222,
         "e0d0e25a03b163903fb7ff1815226b0dd253b24f87c7468db99313d44f27195e"),
        ("model.ckpt-0350.index", 35553,
         "108e693f1cd98ca99aa0157b5be09b0b3c8921cca6e3d75950524fdec1d81601"),
        _CHECKPOINT_FILE), 74.6, "keras-tf-checkpoint"),
    Published("RAN-e-GT", "ran_e_gt", _files(
        f"{_E}/RAN-e-GT",
        ("model.ckpt-0350.data-00000-of-00001", 61049189,
         "0e3f61fb1e23ca2cb212fe57fecb86f077e6045cc303d8af701132a48b1491a1"),
        ("model.ckpt-0350.index", 51083,
         "d7366ddec565f47a34b9ceb522314495c015a6bb453be8c4d1b8b6bca70056e2"),
        _CHECKPOINT_FILE), 74.6, "keras-tf-checkpoint",
        note="its size fits about 0.58M more trainable parameters and ~226 more checkpoint keys than the "
             "published GT configuration (4.52M); list its keys before trusting a mapping"),
    Published("RAN-i-T", "ran_i_tiny", _files(
        f"{_I}/img_cls_imagenet",
        ("RAN_i_Tiny_82.03.pth", 332599279,
         "6c6ddc1afeb19ce3905f07d637a4672167c72a0800639af611af43e0b1ffb49d")),
        82.03, "torch-training-checkpoint"),
    Published("RAN-i-S", "ran_i_small", _files(
        f"{_I}/img_cls_imagenet",
        ("RAN_i_Small_82.63.pth", 463317807,
         "5a1ea0aea97aa47215af4f2030c345f438ef42246e6e4c17707ce02a2a0b735e")),
        82.63, "torch-training-checkpoint"),
    Published("RAN-i-B", "ran_i_base", _files(
        f"{_I}/img_cls_imagenet",
        ("RAN_i_Base_83.61.pth", 846787091,
         "7abc9859eb82fa7597ce009900474b642f15973e688f186f44f3e59ebbb2ba0f")),
        83.61, "torch-training-checkpoint"),
    Published("RAN-i-S detector", "ran_i_small", _files(
        f"{_I}/obj_det_coco",
        ("RAN_i_S_backbone_detector.pth", 379176977,
         "81b49963c00c4c440c969b419637416a3b8e21308f0ced88416cd24c04f7f82e")),
        None, "torchvision-detector",
        note="COCO detector (no top-1); backbone = RAN-i-S without its head. Its size fits the code's box-head "
             "width 512 (47.38M parameters x 8 bytes: model + SGD momentum, within 0.05%), not the 1024 that "
             "Table 3's 63.60M implies"),
)


def all_files() -> List[Tuple[Published, PublishedFile]]:
    """Every (set, file) pair; the RAN-e ``checkpoint`` index file appears once per RAN-e set."""
    return [(entry, f) for entry in PUBLISHED for f in entry.files]


def get(name: str) -> Published:
    """A published set by its name (``RAN-e-GT``) or our model name (``ran_e_gt``; the classifier)."""
    for entry in PUBLISHED:
        if name == entry.name or (name == entry.model and entry.top1 is not None):
            return entry
    raise WeightsError(f"no published weights named {name!r}; known: {', '.join(e.name for e in PUBLISHED)}")


def sha256_file(path, progress: Optional[Progress] = None, chunk_size: int = 8 << 20) -> str:
    """The file's sha256, read in chunks; ``progress(done_bytes, total_bytes)`` after each chunk."""
    total = os.path.getsize(path)
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


@dataclass(frozen=True)
class Identification:
    """What ``identify`` found: the published file (or None) and why."""
    path: Path
    file: Optional[PublishedFile]
    sets: Tuple[Published, ...]
    reason: str

    @property
    def published(self) -> bool:
        return self.file is not None


def identify(path, progress: Optional[Progress] = None) -> Identification:
    """Which published file ``path`` is: by name and size first, then by sha256 (only when those fit).

    A renamed file is found by size and hash. A git-lfs pointer is recognised and reported as one.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    size = path.stat().st_size
    pointer = _lfs_pointer(path, size)
    if pointer is not None:
        return _pointer_identification(path, pointer)
    by_name = [(e, f) for e, f in all_files() if f.name == path.name]
    candidates = [(e, f) for e, f in by_name if f.bytes == size] or (
        [] if by_name else [(e, f) for e, f in all_files() if f.bytes == size])
    if not candidates:
        why = (f"named like {by_name[0][1].path} but {size:,} bytes, not {by_name[0][1].bytes:,}" if by_name
               else f"no published file is named {path.name!r} or has {size:,} bytes")
        return Identification(path, None, (), f"not a published file: {why}")
    digest = sha256_file(path, progress)
    matches = [(e, f) for e, f in candidates if f.sha256 == digest]
    if not matches:
        return Identification(path, None, (), f"not a published file: same size as {candidates[0][1].path} but "
                                              f"sha256 {digest} differs (corrupt download or another file)")
    file = matches[0][1]
    sets = tuple(e for e, f in matches)
    renamed = "" if file.name == path.name else f" (renamed from {file.name})"
    return Identification(path, file, sets, f"{file.path} of {', '.join(e.name for e in sets)}{renamed}")


def verify(path, expected: Optional[PublishedFile] = None, progress: Optional[Progress] = None) -> PublishedFile:
    """Check ``path`` is a complete, unmodified published file (``expected``, or whichever it claims to be).

    Returns the published file; raises ``WeightsError`` saying what differs.
    """
    if expected is None:
        found = identify(path, progress)
        if not found.published:
            raise WeightsError(f"{path}: {found.reason}")
        return found.file
    size = Path(path).stat().st_size
    if size != expected.bytes:
        raise WeightsError(f"{path}: {size:,} bytes, but {expected.path} has {expected.bytes:,} "
                           f"({'truncated download?' if size < expected.bytes else 'not this file'})")
    digest = sha256_file(path, progress)
    if digest != expected.sha256:
        raise WeightsError(f"{path}: sha256 {digest} differs from {expected.path}'s {expected.sha256}")
    return expected


def _lfs_pointer(path: Path, size: int) -> Optional[Tuple[str, int]]:
    """(sha256, size) if the file is a git-lfs pointer, else None."""
    if size > 1024:
        return None
    text = path.read_bytes().decode("utf-8", "replace")
    if not text.startswith("version https://git-lfs.github.com/spec/v1"):
        return None
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    try:
        return fields["oid"].removeprefix("sha256:"), int(fields["size"])
    except (KeyError, ValueError):
        return None


def _pointer_identification(path: Path, pointer: Tuple[str, int]) -> Identification:
    digest, size = pointer
    matches = [(e, f) for e, f in all_files() if f.sha256 == digest and f.bytes == size]
    target = f"a pointer to {matches[0][1].path}" if matches else "a pointer to an unpublished object"
    return Identification(path, None, tuple(e for e, _ in matches),
                          f"a git-lfs pointer file, not the weights ({target}); run `git lfs pull` in the clone")


__all__ = ["PUBLISHED", "Published", "PublishedFile", "Identification", "REPOSITORY", "all_files", "get",
           "sha256_file", "identify", "verify"]
