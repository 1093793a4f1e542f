"""TFLite exports of a detector: backbone + RPN as int8 (for Vela / Ethos-U), the whole detector as fp32.

The NPU part is ``backbone_rpn`` at a fixed square input: convolutions only, int8 in and out,
compiled by ``ran vela``. Proposal selection (top-k, box decoding, NMS), RoIAlign, the RoI head's
dense layers and the final per-class NMS stay CPU work. The whole detector (both stages and what
runs between them, one image of fixed size) is converted to fp32 TFLite with builtin ops only
when the converter can express it; the report says whether it could and how its detections
compare with Keras's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np

from ran_keras import fileio
from ran_keras.backend import tf
from ran_keras.tasks.detection import datasets as ds
from ran_keras.tasks.detection.config import backbone_spec
from ran_keras.tasks.detection.model import build_backbone_rpn

CPU_STAGE = ("proposal selection (top-k, decode, NMS 0.7), RoIAlign 7x7, the RoI head's dense layers, per-class "
             "NMS 0.5: CPU work after the NPU's backbone + RPN")


def fixed_backbone_rpn(detector, size: int, spec=None):
    """``detector.backbone_rpn`` rebuilt at a fixed (size, size, 3) input with the same weights."""
    fixed = build_backbone_rpn(detector.config, backbone_spec(detector.config, spec), (size, size, 3))
    fixed.set_weights(detector.backbone_rpn.get_weights())
    return fixed


def calibration_images(size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Offline photos (``ran_keras.export.calibration``'s default source), normalised as the detector's inputs."""
    from ran_keras.export.calibration import calibration_set
    images, _ = calibration_set(count=count, size=size, mean=ds.MEAN, std=ds.STD, seed=seed)
    return images


def export_backbone_rpn(detector, out_dir, size: int, spec=None, samples: int = 8) -> Dict[str, Any]:
    """Write ``backbone_rpn_<size>_int8.tflite`` (full integer, int8 in/out) and report its ops."""
    from ran_keras.export.flatbuffer import check_integer_only, inspect_tflite
    from ran_keras.export.tflite import to_tflite
    fixed = fixed_backbone_rpn(detector, size, spec)
    data = to_tflite(fixed, calibration_images(size, samples), int8=True)
    info = inspect_tflite(data)
    check_integer_only(info, f"the int8 export of {fixed.name}")
    path = fileio.write_bytes(Path(out_dir) / f"backbone_rpn_{size}_int8.tflite", data)
    return {"path": str(path), "input": [1, size, size, 3], "size_bytes": info.size_bytes, "ops": info.op_counts,
            "outputs": [t.to_dict() for t in info.outputs], "cpu_stage": CPU_STAGE}


def export_whole(detector, out_dir, size: int) -> Dict[str, Any]:
    """Try the whole detector as fp32 TFLite (builtin ops); on success compare its detections with Keras's."""
    from ran_keras.export.litert import interpreter
    image_size = tf.constant([[size, size]], tf.int32)
    fn = tf.function(lambda image: _flat(detector({"image": image, "image_size": image_size})))
    concrete = fn.get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32, name="image"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], detector)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        data = bytes(converter.convert())
    except Exception as err:  # noqa: BLE001 - the converter's message is the finding
        return {"converted": False, "error": str(err).strip().splitlines()[-1][:500]}
    path = fileio.write_bytes(Path(out_dir) / f"{detector.config.name}_{size}_fp32.tflite", data)
    image = calibration_images(size, 1, seed=1)
    want = {k: v.numpy() for k, v in fn(tf.constant(image)).items()}
    try:
        interp = interpreter(data)
        runner = interp.get_signature_runner() if interp.get_signature_list() else None
        got = runner(image=image) if runner is not None else _run_plain(interp, image)
    except Exception as err:  # noqa: BLE001
        return {"converted": True, "path": str(path), "runs": False, "error": str(err).strip()[:500]}
    if not isinstance(got, dict):
        got = dict(zip(sorted(want), got))
    n = int(want["num_detections"][0])
    same_count = int(np.asarray(got["num_detections"]).reshape(-1)[0]) == n
    report = {"converted": True, "path": str(path), "runs": True, "size_bytes": len(data), "keras_detections": n,
              "same_detection_count": same_count}
    if same_count:
        report["max_box_diff_px"] = float(np.abs(np.asarray(got["boxes"])[0, :n] - want["boxes"][0, :n]).max(initial=0))
        report["max_score_diff"] = float(np.abs(np.asarray(got["scores"])[0, :n] - want["scores"][0, :n]).max(initial=0))
    return report


def _flat(det: Dict[str, Any]) -> Dict[str, Any]:
    return {"boxes": det["boxes"], "scores": det["scores"], "classes": det["classes"],
            "num_detections": det["num_detections"]}


def _run_plain(interp, image):
    interp.set_tensor(interp.get_input_details()[0]["index"], image)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]
