"""TensorFlow checkpoints (``model.ckpt-0350.index`` + ``.data-00000-of-00001``): variables by key.

**The published RAN-e checkpoints.** The reference's training script (RAN_e/, built on NVIDIA's
EfficientNet TF2 example) saves with ``tf.keras.callbacks.ModelCheckpoint('model.ckpt-{epoch:04d}',
save_weights_only=True)``, i.e. ``model.save_weights`` in the TF format of a compiled functional Keras
model trained with RMSprop (rho 0.9, momentum 0.9, epsilon 1e-3) under Horovod. Keys follow the
object graph rooted at the model:

* ``layer_with_weights-N/<attr>/.ATTRIBUTES/VARIABLE_VALUE`` for every layer that owns weights, ``N``
  counting those layers in ``model.layers`` order (graph order: stem conv, each block's layers,
  ``top1x1`` conv/BN, ``topDS`` depthwise/BN, ``logits`` Dense). ``<attr>`` is the Keras attribute:
  ``kernel``, ``bias``, ``depthwise_kernel``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``.
  Layer *names* (``stack_0/mb_conv_block_0__k3/expand__96_conv2d``...) do not appear in keys.
* An IBN (``mb_conv_block``) is six separate layers: expand conv, BN, depthwise, BN, project conv, BN
  (twelve in the 128 -> 128 pair, ``expand2``/``depthwise2``/``project2``). A collapsed block is ONE
  custom layer (``COLLAPSED_BLOCK_WRAPPER``) whose sub-layers are attributes, so its keys are
  ``layer_with_weights-N/{preceding_bn,collapsed_conv1,collapsed_bn1[,collapsed_conv2,collapsed_bn2]}/<attr>``.
* The stem conv has no bias (``layer_with_weights-0/kernel`` only); there is no stem BN. Inputs are
  normalised inside the graph with the ImageNet mean/std on 0-255 pixels (weightless layers).
* Bookkeeping, skipped here: ``_CHECKPOINTABLE_OBJECT_GRAPH`` (the serialized object graph, stored in
  the data file), ``optimizer/...`` (iterations, hyper-parameters) and the RMSprop slots
  ``<variable key>/.OPTIMIZER_SLOT/optimizer/{rms,momentum}/...``. A ``tf.train.Checkpoint`` adds
  ``save_counter/...``.

``ran_keras.weights.keymaps.ran_e_reference_keys`` turns this into the exact key list for our
``ran_e_c`` / ``ran_e_gt`` (72 weighted layers, 222 values for GT; a reference-like model saved by
Keras produces exactly these keys: tests/test_weights_tf_ckpt.py). The registered RAN-e specs
follow the reference's numerics: no stem bias, ImageNet mean/std (0.485/0.456/0.406 x 255,
0.229/0.224/0.225 x 255) as their input normalisation.

**Sizes.** Saved this way, a model costs 4 x (params + 2 x trainable) bytes plus ~96 kB of object graph.
The published RAN-e-C data file (55,871,222 B) is within 3.4 kB of a reference-like save of the
published C configuration, and its index (35,553 B) within 59 B. The RAN-e-GT files are 6.96 MB and
16 kB larger than the published GT configuration gives (61,049,189 vs 54,085,144; 51,083 vs 35,020):
about 0.58M more trainable parameters and ~226 more keys. Its layers will not map onto ``ran_e_gt``
until the real key list is known; ``list_variables`` needs only the 51 kB ``.index`` file to show it.

Reading uses ``tf.train.load_checkpoint`` (the C++ bundle reader; values are read per key on demand).
``write_checkpoint`` writes a bundle with arbitrary keys (``SaveV2``) for fixtures.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from ran_keras.fileio import atomic_path
from ran_keras.weights.errors import WeightsError

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_SKIP_PREFIXES = ("optimizer/", "save_counter/", "keras_api/")


def is_bookkeeping(key: str) -> bool:
    """True for keys that are not model weights: the object graph, optimizer state, counters, slots."""
    return (key == OBJECT_GRAPH or key.startswith(_SKIP_PREFIXES) or "/.OPTIMIZER_SLOT/" in key
            or (key.endswith("/.ATTRIBUTES/OBJECT_CONFIG_JSON")))


def strip_key(key: str) -> str:
    """``layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE`` -> ``layer_with_weights-0/kernel``."""
    return key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


def resolve_prefix(path) -> str:
    """The checkpoint prefix for a prefix, its ``.index``/``.data-*`` file, or a folder with a ``checkpoint`` file."""
    path = Path(path)
    if path.is_dir():
        from ran_keras.backend import tf
        latest = tf.train.latest_checkpoint(str(path))
        if latest is None:
            raise WeightsError(f"{path}: no TF checkpoint in this folder (no usable 'checkpoint' file)")
        return latest
    text = str(path)
    for ending in (".index", ".data-00000-of-00001"):
        if text.endswith(ending):
            text = text[: -len(ending)]
    if not Path(text + ".index").is_file():
        raise WeightsError(f"{path}: not a TF checkpoint (no {Path(text).name}.index next to it)")
    return text


def _reader(path):
    from ran_keras.backend import tf
    prefix = resolve_prefix(path)
    try:
        return tf.train.load_checkpoint(prefix), prefix
    except Exception as err:  # the C++ reader raises DataLossError / NotFoundError on bad bundles
        raise WeightsError(f"{prefix}: cannot read the TF checkpoint: {err}") from None


def list_variables(path, *, bookkeeping: bool = False) -> Dict[str, Tuple[int, ...]]:
    """{key: shape}, keys stripped of ``/.ATTRIBUTES/VARIABLE_VALUE``, sorted; bookkeeping left out unless asked."""
    reader, _ = _reader(path)
    shapes = reader.get_variable_to_shape_map()
    return {strip_key(k): tuple(shapes[k]) for k in sorted(shapes) if bookkeeping or not is_bookkeeping(k)}


def read_variables(path, keys: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """{stripped key: value} of the model variables (or just ``keys``, stripped or full)."""
    reader, prefix = _reader(path)
    full = {strip_key(k): k for k in reader.get_variable_to_shape_map() if not is_bookkeeping(k)}
    wanted = sorted(full) if keys is None else [strip_key(k) for k in keys]
    missing = [k for k in wanted if k not in full]
    if missing:
        raise WeightsError(f"{prefix}: no variables {', '.join(missing[:10])}"
                           f"{f' (and {len(missing) - 10} more)' if len(missing) > 10 else ''}")
    return {k: np.asarray(reader.get_tensor(full[k])) for k in wanted}


def write_checkpoint(prefix, values: Mapping[str, np.ndarray], *, suffix: bool = True) -> str:
    """Write a TF V2 checkpoint bundle holding exactly ``values`` under the given keys; returns the prefix.

    ``suffix=True`` appends ``/.ATTRIBUTES/VARIABLE_VALUE`` to every key that lacks it (object-graph
    style keys); the ``.data`` file replaces the old one before the ``.index`` does (each atomically).
    """
    from ran_keras.backend import tf
    if not values:
        raise WeightsError("write_checkpoint needs at least one value")
    prefix = Path(prefix)
    names = [k if not suffix or k.endswith(VALUE_SUFFIX) or k == OBJECT_GRAPH else k + VALUE_SUFFIX
             for k in values]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=prefix.parent, prefix=f".{prefix.name}.") as tmp:
        tmp_prefix = os.path.join(tmp, "ckpt")
        tf.raw_ops.SaveV2(prefix=tmp_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tf.constant(np.asarray(v)) for v in values.values()])
        for ending in (".data-00000-of-00001", ".index"):
            with atomic_path(str(prefix) + ending) as out:
                os.replace(tmp_prefix + ending, out)
    return str(prefix)


__all__ = ["list_variables", "read_variables", "write_checkpoint", "is_bookkeeping", "strip_key",
           "resolve_prefix", "VALUE_SUFFIX", "OBJECT_GRAPH"]
