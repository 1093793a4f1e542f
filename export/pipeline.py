"""``ran export``: a registered model, a spec JSON or a saved Keras model -> checked int8 TFLite.

Steps: resolve and build the model (seeded weights), make the representative data, convert,
read the flatbuffer back (ops, tensor types; an int8 export with a float tensor fails), compare
with the Keras model on the calibration images, write the file atomically.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from ran_keras import fileio
from ran_keras.export.settings import CALIBRATION_COUNT, CALIBRATION_SOURCE, canonical_activation
from ran_keras.export.errors import ExportError
from ran_keras.export.flatbuffer import TFLiteInfo, check_integer_only, inspect_tflite

KERAS_SUFFIXES = (".keras", ".h5")
SPEC_SUFFIX = ".json"
TFLITE_SUFFIX = ".tflite"
#: model files of other frameworks: named in the error instead of "unknown model"
FOREIGN_SUFFIXES = (".onnx", ".pb", ".pbtxt", ".pt", ".pth", ".ckpt", ".mlmodel", ".safetensors")


def file_kind(ref) -> Optional[str]:
    """What a MODEL argument looks like (suffixes in any case): 'tflite', 'keras', 'spec' (a .json,
    another path or an existing file), 'foreign' (another framework's file, or an unknown suffix),
    or None for a model name (and for dicts / NetworkSpecs)."""
    if not isinstance(ref, (str, os.PathLike)):
        return None
    text = os.fspath(ref)
    suffix = Path(text).suffix.lower()
    if suffix == TFLITE_SUFFIX:
        return "tflite"
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix in FOREIGN_SUFFIXES:
        return "foreign"
    if (suffix == SPEC_SUFFIX or isinstance(ref, os.PathLike) or "/" in text or os.sep in text
            or os.path.isfile(text)):
        return "spec"
    if suffix:
        from ran_keras import registry
        return None if registry.is_registered(text) else "foreign"
    return None


def model_label(spec_name: str, activation: Optional[str]) -> str:
    """The name of a model in reports and file names: the spec's, plus ``_<activation>`` when one
    replaces the model's own (canonical spelling: ``ran_e_gt_hard_swish``, never ``_default``)."""
    act = canonical_activation(activation)
    return spec_name if act is None else f"{spec_name}_{act}"


def output_name(label: str, int8: bool = True) -> str:
    """Default .tflite file name of an export: ``<label>_int8.tflite`` or ``<label>_fp32.tflite``."""
    return f"{label}_{'int8' if int8 else 'fp32'}.tflite"


@dataclass(frozen=True)
class ModelRef:
    """What a MODEL argument names, resolved without TensorFlow."""
    origin: str                     # 'registered' | 'spec' | 'keras' | 'tflite'
    label: str                      # name used in reports and file names
    spec: Any = None                # NetworkSpec, activation applied (registered / spec)
    path: Optional[Path] = None     # saved Keras model / .tflite file
    activation: Optional[str] = None  # canonical replacement activation; None = the model's own


def _accepted(tflite: bool, keras: bool) -> str:
    kinds = (["a .tflite file"] if tflite else []) + ["a registered name", "a spec .json"] + (
        ["a .keras/.h5 model"] if keras else [])
    return ", ".join(kinds[:-1]) + " or " + kinds[-1]


def resolve_model_arg(ref, activation: Optional[str] = None, *, command: str = "ran export",
                      tflite: bool = False, keras: bool = True) -> ModelRef:
    """Resolve a MODEL argument: a registered name, a spec .json path (or dict / NetworkSpec), a
    saved .keras/.h5 model, and with ``tflite`` a .tflite file. ``activation`` replaces every
    non-linearity of a spec (not of saved models). Suffixes are matched in any case; a file-like
    argument of the wrong kind, or one that does not exist, gets an error saying what
    ``command`` accepts. TensorFlow is not imported."""
    from ran_keras import registry
    from ran_keras.spec import with_activation
    act = canonical_activation(activation)
    kind = file_kind(ref)
    accepted = _accepted(tflite, keras)
    if kind == "foreign" or (kind == "tflite" and not tflite):
        what = (("already a TFLite file" if command == "ran export" else "a TFLite file") if kind == "tflite" else
                "neither a registered model nor a model file ran-keras reads")
        hint = " (use `ran vela` or `ran bench-cpu` on .tflite files)" if kind == "tflite" else ""
        raise ExportError(f"{os.fspath(ref)!r} is {what}; `{command}` takes {accepted}{hint}")
    if kind == "keras" and not keras:
        raise ExportError(f"{os.fspath(ref)!r} is a saved Keras model; `{command}` builds models from specs and "
                          f"takes {accepted} (use `ran export` and `ran vela` for saved Keras models)")
    if kind in ("tflite", "keras"):
        path = Path(ref)
        if not path.is_file():
            what = "TFLite file" if kind == "tflite" else "model file"
            raise FileNotFoundError(f"{what} {os.fspath(ref)!r} does not exist; `{command}` takes {accepted}")
        if act is not None:
            what = ".tflite files" if kind == "tflite" else "saved Keras models"
            raise ExportError(f"--activation applies to specs, not to {what} ({os.fspath(ref)!r})")
        return ModelRef(kind, path.stem, path=path)
    spec = registry.resolve_spec(Path(ref) if kind == "spec" else ref)
    origin = "registered" if kind is None and isinstance(ref, str) and registry.is_registered(ref) else "spec"
    if act is not None:
        spec = with_activation(spec, act)
    return ModelRef(origin, model_label(spec.name, act), spec, activation=act)


@dataclass
class ResolvedModel:
    model: Any                      # the tf_keras model
    label: str                      # name used in reports and file names
    origin: str                     # 'registered' | 'spec' | 'keras'
    spec: Any = None                # NetworkSpec (a saved Keras model's: its X.spec.json sidecar, or None)


def default_output(ref, activation: Optional[str] = None, int8: bool = True, folder=".") -> Path:
    """``folder/<label>_int8.tflite`` (or ``_fp32``) for a MODEL argument."""
    return Path(folder) / output_name(resolve_model_arg(ref, activation).label, int8)


def resolve_model(ref, *, input_size: Optional[int] = None, classes: int = 1000,
                  activation: Optional[str] = None, seed: int = 0) -> ResolvedModel:
    """Build (or load) the model to export. A Keras model object is used as it is."""
    if not isinstance(ref, (str, os.PathLike, Mapping)) and _is_keras_model(ref):
        if canonical_activation(activation) is not None:
            raise ExportError("activation applies to specs, not to an already built Keras model")
        return ResolvedModel(ref, ref.name, "keras")
    resolved = resolve_model_arg(ref, activation)
    if resolved.origin == "keras":
        from ran_keras.builder import load_model
        from ran_keras.spec import load_sidecar
        model = load_model(resolved.path)
        if input_size is not None:
            from ran_keras.export.tflite import input_shape_of
            h, w, _ = input_shape_of(model)
            if (h, w) != (input_size, input_size):
                raise ExportError(f"{ref} was saved with a {h}x{w} input; --input-size {input_size} cannot "
                                  "change a saved model (rebuild it from its spec instead)")
        return ResolvedModel(model, resolved.label, "keras", load_sidecar(resolved.path))
    spec = resolved.spec
    size = input_size or spec.input_size
    from ran_keras.builder import build_model
    model = build_model(spec, (size, size, spec.input_channels), classes=classes, seed=seed)
    return ResolvedModel(model, resolved.label, resolved.origin, spec)


def check_export_memory(ref, activation: Optional[str] = None, *, input_size: Optional[int], classes: int,
                        samples: int, parallel: int = 1) -> None:
    """Refuse an export (``parallel`` at once) that cannot fit in memory, naming the setting to lower.
    Specs and registered models only (a saved model's size is known once it is loaded)."""
    from ran_keras.analysis import memory
    from ran_keras.spec import NetworkSpec
    if isinstance(ref, NetworkSpec):
        spec = ref
    elif isinstance(ref, (str, os.PathLike, Mapping)) and file_kind(ref) not in ("keras", "tflite"):
        spec = resolve_model_arg(ref, activation).spec
    else:
        return
    estimate = memory.export(spec, image_size=input_size or spec.input_size, classes=classes, samples=samples)
    if parallel > 1:
        estimate = memory.Estimate(f"{estimate.what}, {parallel} at once (--jobs)",
                                   {k: v * parallel for k, v in estimate.parts.items()})
    memory.check(estimate, {"calibration images": "--samples", "activations": "--input-size",
                            "weights (Keras model and converter copies)": "the model's size"}, "--no-memory-check")


def _is_keras_model(obj) -> bool:
    from ran_keras.backend import keras
    return isinstance(obj, keras.Model)


@dataclass
class ExportResult:
    tflite: bytes
    info: TFLiteInfo
    report: Dict[str, Any] = field(default_factory=dict)


def export_model(ref, output=None, *, input_size: Optional[int] = None, classes: int = 1000,
                 activation: Optional[str] = None, seed: int = 0, calibration: str = CALIBRATION_SOURCE,
                 samples: int = CALIBRATION_COUNT, int8: bool = True, per_channel: bool = True,
                 compare: bool = True, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, data_dir: Optional[str] = None,
                 progress=None, memory_check: bool = True) -> ExportResult:
    """Export ``ref`` to TFLite and check it; writes ``output`` atomically when given.

    ``mean``/``std`` override the spec's input normalisation. A saved Keras model uses the spec
    beside it (``x.spec.json``, written by training and ``ran weights import``); without one the
    default is 127.5/127.5, i.e. inputs in [-1, 1]. With ``output``, the spec (when known) is
    written beside the .tflite too, for ``ran eval``. With ``memory_check``, an export whose
    estimated memory (``ran_keras.analysis.memory.export``) exceeds the machine's is refused first.
    """
    from ran_keras.export.tflite import compare_with_keras, input_shape_of, to_tflite
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    if memory_check:
        check_export_memory(ref, activation, input_size=input_size, classes=classes,
                            samples=samples if (int8 or compare) else 0)
    resolved = resolve_model(ref, input_size=input_size, classes=classes, activation=activation, seed=seed)
    h, w, c = input_shape_of(resolved.model)
    if h != w:
        raise ExportError(f"{resolved.label} has a {h}x{w} input; calibration images are square")
    images = None
    calib_info: Optional[Dict[str, Any]] = None
    if int8 or compare:
        from ran_keras.export import calibration as cal
        images, calib_info = cal.calibration_set(calibration, samples, h, spec=resolved.spec, mean=mean, std=std,
                                                 channels=c, seed=seed, data_dir=data_dir)
        if resolved.spec is None and mean is None and std is None:
            calib_info["normalisation_note"] = "saved Keras model: no spec, default mean/std 127.5 used"
    say(f"converting {resolved.label} ({h}x{w}x{c}, {'int8' if int8 else 'fp32'}) ...")
    data = to_tflite(resolved.model, images if int8 else None, int8=int8, per_channel=per_channel)
    info = inspect_tflite(data)
    if int8:
        check_integer_only(info, f"the int8 export of {resolved.label}")
    agreement = compare_with_keras(resolved.model, data, images) if compare else None
    act = canonical_activation(activation)
    report: Dict[str, Any] = {
        "model": resolved.label, "origin": resolved.origin,
        "spec": resolved.spec.name if resolved.spec is not None else None,
        "activation": act or "default", "input_shape": [h, w, c],
        "classes": int(resolved.model.output_shape[-1]) if resolved.model.output_shape else None,
        "seed": seed, "quantization": "int8" if int8 else "fp32",
        "weights": ("per-channel" if per_channel else "per-tensor") if int8 else "float32",
        "calibration": calib_info if int8 else None,
        "tflite": info.to_dict(), "integer_only": info.is_integer_only, "agreement": agreement,
    }
    if output is not None:
        report["output"] = str(fileio.write_bytes(output, data))
        if resolved.spec is not None:
            from ran_keras.spec import sidecar_path
            report["spec_file"] = str(resolved.spec.replace(input_size=h).save(sidecar_path(output)))
    say(f"exported {resolved.label}: {info.size_bytes / 1e6:.2f} MB, {len(info.ops)} ops "
        f"in {time.perf_counter() - t0:.1f} s")
    return ExportResult(data, info, report)
