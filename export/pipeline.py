"""``ran export``: a registered model, a spec JSON or a saved Keras model -> checked int8 TFLite.

Steps: resolve and build the model (seeded weights), make the representative data, convert,
read the flatbuffer back (ops, tensor types; an int8 export with a float tensor fails), compare
with the Keras model on the calibration images, write the file atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ran_keras import io
from ran_keras.export import calibration as cal
from ran_keras.export.errors import ExportError
from ran_keras.export.flatbuffer import TFLiteInfo, check_integer_only, inspect_tflite

KERAS_SUFFIXES = (".keras", ".h5")


@dataclass
class ResolvedModel:
    model: Any                      # the tf_keras model
    label: str                      # name used in reports and file names
    origin: str                     # 'registered' | 'spec' | 'keras'
    spec: Any = None                # NetworkSpec (None for a saved Keras model)


def is_keras_file(ref) -> bool:
    return isinstance(ref, (str, Path)) and str(ref).endswith(KERAS_SUFFIXES)


def resolve_spec_for(ref, activation: Optional[str] = None):
    """(spec, origin) for a registered name / spec path / dict / NetworkSpec, activation applied."""
    from ran_keras import registry
    from ran_keras.spec import NetworkSpec, with_activation
    spec = registry.resolve_spec(ref)
    origin = "registered" if isinstance(ref, str) and registry.is_registered(ref) else "spec"
    if isinstance(ref, NetworkSpec):
        origin = "spec"
    if activation not in (None, "default"):
        spec = with_activation(spec, activation)
    return spec, origin


def model_label(spec_name: str, activation: Optional[str]) -> str:
    return spec_name if activation in (None, "default") else f"{spec_name}_{activation}"


def resolve_model(ref, *, input_size: Optional[int] = None, classes: int = 1000,
                  activation: Optional[str] = None, seed: int = 0) -> ResolvedModel:
    """Build (or load) the model to export. A Keras model object is used as it is."""
    from ran_keras.backend import keras
    if isinstance(ref, keras.Model):
        if activation not in (None, "default"):
            raise ExportError("activation applies to specs, not to an already built Keras model")
        return ResolvedModel(ref, ref.name, "keras")
    if is_keras_file(ref):
        if activation not in (None, "default"):
            raise ExportError("--activation applies to specs, not to saved Keras models")
        from ran_keras.builder import load_model
        model = load_model(ref)
        if input_size is not None:
            from ran_keras.export.tflite import input_shape_of
            h, w, _ = input_shape_of(model)
            if (h, w) != (input_size, input_size):
                raise ExportError(f"{ref} was saved with a {h}x{w} input; --input-size {input_size} cannot "
                                  "change a saved model (rebuild it from its spec instead)")
        return ResolvedModel(model, Path(ref).stem, "keras")
    spec, origin = resolve_spec_for(ref, activation)
    size = input_size or spec.input_size
    from ran_keras.builder import build_model
    label = model_label(spec.name, activation)
    model = build_model(spec, (size, size, spec.input_channels), classes=classes, seed=seed)
    return ResolvedModel(model, label, origin, spec)


@dataclass
class ExportResult:
    tflite: bytes
    info: TFLiteInfo
    report: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None


def export_model(ref, output=None, *, input_size: Optional[int] = None, classes: int = 1000,
                 activation: Optional[str] = None, seed: int = 0, calibration: str = cal.DEFAULT_SOURCE,
                 samples: int = cal.DEFAULT_COUNT, int8: bool = True, per_channel: bool = True,
                 compare: bool = True, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, data_dir: Optional[str] = None,
                 progress=None) -> ExportResult:
    """Export ``ref`` to TFLite and check it; writes ``output`` atomically when given.

    ``mean``/``std`` override the spec's input normalisation (needed for saved Keras models,
    which carry none; the default there is 127.5/127.5, i.e. inputs in [-1, 1]).
    """
    from ran_keras.export.tflite import compare_with_keras, input_shape_of, to_tflite
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    resolved = resolve_model(ref, input_size=input_size, classes=classes, activation=activation, seed=seed)
    h, w, c = input_shape_of(resolved.model)
    if h != w:
        raise ExportError(f"{resolved.label} has a {h}x{w} input; calibration images are square")
    images = None
    calib_info: Optional[Dict[str, Any]] = None
    if int8 or compare:
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
    report: Dict[str, Any] = {
        "model": resolved.label, "origin": resolved.origin,
        "spec": resolved.spec.name if resolved.spec is not None else None,
        "activation": activation or "default", "input_shape": [h, w, c],
        "classes": int(resolved.model.output_shape[-1]) if resolved.model.output_shape else None,
        "seed": seed, "quantization": "int8" if int8 else "fp32",
        "weights": ("per-channel" if per_channel else "per-tensor") if int8 else "float32",
        "calibration": calib_info if int8 else None,
        "tflite": info.to_dict(), "integer_only": info.is_integer_only, "agreement": agreement,
    }
    path = None
    if output is not None:
        path = io.write_bytes(output, data)
        report["output"] = str(path)
    say(f"exported {resolved.label}: {info.size_bytes / 1e6:.2f} MB, {len(info.ops)} ops "
        f"in {time.perf_counter() - t0:.1f} s")
    return ExportResult(data, info, report, path)
