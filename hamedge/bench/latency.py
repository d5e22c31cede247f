"""Timing loops and latency statistics (trtexec's figures: min/mean/median/p90/p95/p99, throughput).

No torch here: the loop times any callable. Each sample is one call (one batch) measured with
time.perf_counter_ns; warm-up calls run first and are never recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hamedge.errors import HamedgeError

# A p99 drawn from fewer samples than this is mostly the single slowest call; the report marks it.
P99_MIN_SAMPLES = 100
# Defaults when neither --iterations nor --seconds is given: up to this many samples, or until
# this many seconds have passed, but never fewer than MIN_SAMPLES.
DEFAULT_MAX_ITERATIONS = 200
DEFAULT_SECONDS = 10.0
MIN_SAMPLES = 10


@dataclass(frozen=True)
class StopRule:
    """When a timing loop stops: after ``iterations`` samples, or once ``seconds`` have passed
    (and at least ``min_iterations`` samples exist), whichever comes first; None means no limit."""

    iterations: int | None = None
    seconds: float | None = None
    min_iterations: int = 1
    warmup: int = 3

    @classmethod
    def from_options(cls, warmup: int, iterations: int | None, seconds: float | None) -> "StopRule":
        if warmup < 0:
            raise HamedgeError("--warmup must be 0 or more")
        if iterations is not None and seconds is not None:
            raise HamedgeError("give --iterations or --seconds, not both")
        if iterations is not None:
            if iterations < 1:
                raise HamedgeError("--iterations must be at least 1")
            return cls(iterations=iterations, min_iterations=iterations, warmup=warmup)
        if seconds is not None:
            if seconds <= 0:
                raise HamedgeError("--seconds must be positive")
            return cls(seconds=seconds, min_iterations=MIN_SAMPLES, warmup=warmup)
        return cls(iterations=DEFAULT_MAX_ITERATIONS, seconds=DEFAULT_SECONDS,
                   min_iterations=MIN_SAMPLES, warmup=warmup)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], Any], rule: StopRule) -> np.ndarray:
    """Call ``fn`` rule.warmup times unrecorded, then time calls until the rule says stop.
    Returns the per-call durations in nanoseconds (int64)."""
    for _ in range(rule.warmup):
        fn()
    samples: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    deadline = None if rule.seconds is None else started + int(rule.seconds * 1e9)
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append(t1 - t0)
        n = len(samples)
        if rule.iterations is not None and n >= rule.iterations:
            break
        if deadline is not None and t1 >= deadline and n >= rule.min_iterations:
            break
    return np.asarray(samples, dtype=np.int64)


@dataclass
class LatencyStats:
    """Latency of one configuration: per-call figures in milliseconds, throughput in images/s."""

    batch: int
    samples: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    throughput: float  # images per second: batch * samples / total time
    ms_per_image: float
    # GPU backends: the host's enqueue/copy time and the device's compute time (mean ms per call).
    host_ms: float | None = None
    device_ms: float | None = None
    raw_ms: list[float] = field(default_factory=list, repr=False)  # every sample, for plots/compare

    @property
    def p99_meaningful(self) -> bool:
        return self.samples >= P99_MIN_SAMPLES

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray | list[int], batch: int,
                host_ms: float | None = None, device_ms: float | None = None) -> "LatencyStats":
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        if ms.size == 0:
            raise ValueError("no timing samples")
        p90, p95, p99 = np.percentile(ms, [90, 95, 99])
        total_s = float(ms.sum()) / 1e3
        return cls(
            batch=batch, samples=int(ms.size), min_ms=float(ms.min()), mean_ms=float(ms.mean()),
            median_ms=float(np.median(ms)), p90_ms=float(p90), p95_ms=float(p95), p99_ms=float(p99),
            max_ms=float(ms.max()), std_ms=float(ms.std()),
            throughput=batch * ms.size / total_s if total_s > 0 else float("inf"),
            ms_per_image=float(ms.mean()) / batch, host_ms=host_ms, device_ms=device_ms,
            raw_ms=[round(float(v), 4) for v in ms])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["p99_meaningful"] = self.p99_meaningful
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyStats":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def measure(fn: Callable[[], Any], batch: int, rule: StopRule) -> LatencyStats:
    """Time ``fn`` (one call processes ``batch`` images) under ``rule``."""
    return LatencyStats.from_ns(time_calls(fn, rule), batch)
