"""CPU throughput of TFLite models with the TFLite interpreter: median latency and FPS, and A/B.

``bench_tflite`` times ``invoke()`` after warm-up runs. ``ab_bench`` interleaves two models
(A B B A A B ...) so that clock changes and other load on a shared machine hit both alike, and
reports the FPS ratio A/B: the number the paper's CPU comparisons need.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Union

import numpy as np

from ran_keras.export.errors import ExportError

PathOrBytes = Union[str, bytes, bytearray, os.PathLike]


@dataclass
class BenchResult:
    model: str
    sha256: str
    input_dtype: str
    threads: int
    runs: int
    warmup: int
    latencies_ms: List[float] = field(repr=False, default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    def to_dict(self, latencies: bool = False) -> Dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(median_ms=self.median_ms, fps=self.fps, p10_ms=self.percentile_ms(10),
                   p90_ms=self.percentile_ms(90), min_ms=min(self.latencies_ms))
        if latencies:
            out["latencies_ms"] = list(self.latencies_ms)
        return out


@dataclass
class ABResult:
    a: BenchResult
    b: BenchResult

    @property
    def ratio(self) -> float:
        """FPS of A / FPS of B (> 1: A is faster)."""
        return self.a.fps / self.b.fps

    def to_dict(self) -> Dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "fps_ratio_a_over_b": self.ratio,
                "machine": machine()}


def machine() -> Dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


class _Runner:
    """One interpreter with a fixed, seeded input."""

    def __init__(self, model: PathOrBytes, threads: int, seed: int):
        from ran_keras.export.flatbuffer import inspect_tflite, read_bytes
        from ran_keras.export.litert import interpreter
        data = read_bytes(model)
        info = inspect_tflite(data, name=None if isinstance(model, (bytes, bytearray)) else os.fspath(model))
        self.name = (os.path.basename(os.fspath(model)) if not isinstance(model, (bytes, bytearray))
                     else f"<{info.size_bytes} bytes>")
        self.sha256 = info.sha256
        self.interp = interpreter(data, threads=threads)
        rng = np.random.default_rng(seed)
        for detail in self.interp.get_input_details():
            dtype = np.dtype(detail["dtype"])
            shape = detail["shape"]
            if np.issubdtype(dtype, np.integer):
                lim = np.iinfo(dtype)
                x = rng.integers(lim.min, int(lim.max) + 1, size=shape, dtype=dtype)
            else:
                x = rng.standard_normal(shape).astype(dtype)
            self.interp.set_tensor(detail["index"], x)
        self.dtype = str(np.dtype(self.interp.get_input_details()[0]["dtype"]))

    def once(self) -> float:
        t = time.perf_counter()
        self.interp.invoke()
        return (time.perf_counter() - t) * 1000.0


def _check(threads: int, runs: int, warmup: int) -> None:
    for name, value, low in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ExportError(f"{name} must be an integer >= {low}, got {value!r}")


def bench_tflite(path_or_bytes: PathOrBytes, *, threads: int = 1, runs: int = 50, warmup: int = 5,
                 seed: int = 0) -> BenchResult:
    """Median latency / FPS of ``invoke()`` on a seeded random input, after ``warmup`` runs."""
    _check(threads, runs, warmup)
    r = _Runner(path_or_bytes, threads, seed)
    for _ in range(warmup):
        r.once()
    lat = [r.once() for _ in range(runs)]
    return BenchResult(r.name, r.sha256, r.dtype, threads, runs, warmup, lat)


def ab_bench(a: PathOrBytes, b: PathOrBytes, *, threads: int = 1, runs: int = 50, warmup: int = 5,
             seed: int = 0) -> ABResult:
    """Interleaved A/B timing (ABBA order) of two models; ``.ratio`` is FPS(A) / FPS(B)."""
    _check(threads, runs, warmup)
    ra, rb = _Runner(a, threads, seed), _Runner(b, threads, seed)
    for _ in range(warmup):
        ra.once()
        rb.once()
    la: List[float] = []
    lb: List[float] = []
    for i in range(runs):
        if i % 2 == 0:
            la.append(ra.once())
            lb.append(rb.once())
        else:
            lb.append(rb.once())
            la.append(ra.once())
    return ABResult(BenchResult(ra.name, ra.sha256, ra.dtype, threads, runs, warmup, la),
                    BenchResult(rb.name, rb.sha256, rb.dtype, threads, runs, warmup, lb))

