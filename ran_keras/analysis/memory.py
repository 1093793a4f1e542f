"""Memory a command will need, estimated from the spec and its settings before anything starts.

The estimates come from the analytic profile (``profiler.profile_spec``): weights, gradients
and optimizer slots from the parameter count, and every layer's output kept for the backward
pass (training) or alive for one image (export); framework overheads are left out, so they
err low. A command whose estimate exceeds the memory available refuses at once, naming the
setting, instead of being killed by the kernel minutes later. No TensorFlow, no numpy.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Dict, Optional

from ran_keras.errors import RanError

GIB = 1024 ** 3
#: bytes per element of the compute dtype (activations); weights stay float32
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: optimizer slot variables per weight
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "rmsprop": 2, "sgd": 1}


class MemoryEstimateError(RanError):
    """A command would need more memory than the machine has."""


@dataclass(frozen=True)
class Estimate:
    """Bytes a command needs, by part, and what it was for."""
    what: str
    parts: Dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = [f"{name} {gib(size)}" for name, size in self.parts.items() if size >= GIB // 100]
        return f"{gib(self.total)} ({', '.join(shown)})" if shown else gib(self.total)


def gib(size: float) -> str:
    return f"{size / GIB:,.1f} GiB" if size >= GIB // 10 else f"{size / 1024 ** 2:,.0f} MiB"


def _profile(spec, image_size: int, classes: int):
    from ran_keras.analysis.profiler import profile_spec
    return profile_spec(spec, input_size=image_size, classes=classes)


def _activation_elements(prof) -> int:
    """Elements of every layer output of one image (None sizes count as 0)."""
    total = 0
    for row in prof.layers:
        n = 1
        for d in row.output_shape:
            n *= d or 0
        total += n
    return total


def training(spec, *, image_size: int, classes: int, batch_size: int, optimizer: str = "adam",
             dtype: str = "float32", ema: bool = False) -> Estimate:
    """Training at ``batch_size`` images per step: weights + gradients + optimizer slots (+ EMA),
    the layer outputs of the whole batch kept for the backward pass, and the input batch."""
    prof = _profile(spec, image_size, classes)
    copies = 2 + OPTIMIZER_SLOTS.get(optimizer, 2) + (1 if ema else 0)
    act = DTYPE_BYTES.get(dtype, 4)
    channels = spec.input_channels
    return Estimate(f"training {spec.name} at {image_size}x{image_size}, batch {batch_size}", {
        "weights, gradients and optimizer state": prof.params * 4 * copies,
        "activations": batch_size * _activation_elements(prof) * act,
        "input batch": batch_size * image_size * image_size * channels * 4,
    })


def export(spec, *, image_size: int, classes: int, samples: int) -> Estimate:
    """An int8 export: the Keras weights and the converter's copies of them (graph, flatbuffer),
    the calibration images (uint8 and float32), and one image's layer outputs."""
    prof = _profile(spec, image_size, classes)
    channels = spec.input_channels
    return Estimate(f"exporting {spec.name} at {image_size}x{image_size} with {samples} calibration images", {
        "weights (Keras model and converter copies)": prof.params * 4 * 3,
        "calibration images": samples * image_size * image_size * channels * (1 + 4),
        "activations": _activation_elements(prof) * 4,
    })


def accelerator_present() -> bool:
    """A GPU this process may use (NVIDIA or ROCm device files, not hidden by CUDA_VISIBLE_DEVICES):
    training then keeps its activations in the GPU's memory, which is unknown before TensorFlow starts."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def cluster_workers() -> int:
    """Processes of a multi-worker run (TF_CONFIG's chief + workers), 1 without one."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
        return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))
    except (ValueError, AttributeError, TypeError):
        return 1


def available_bytes() -> Optional[int]:
    """Memory this process can still get: MemAvailable, lowered by a cgroup limit (None: unknown)."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_room()
    if limit is not None:
        found.append(limit)
    return min(found) if found else None


def _cgroup_room() -> Optional[int]:
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def check(estimate: Estimate, blame: Dict[str, str], override: str, available: Optional[int] = None) -> None:
    """Raise MemoryEstimateError when ``estimate`` exceeds the available memory (``available`` for
    tests; default: this machine's). The message names the setting ``blame`` gives for the
    largest part, and ``override``, the flag that skips this check."""
    room = available if available is not None else available_bytes()
    if room is None or estimate.total <= room:
        return
    largest = max(estimate.parts, key=estimate.parts.get)
    setting = blame.get(largest, "the model's size")
    raise MemoryEstimateError(
        f"{setting}: {estimate.what} needs about {estimate.describe()}, but {gib(room)} of memory is available; "
        f"lower {setting}, or pass {override} to try anyway")
