"""What every benchmark script records about its run, and how it times a call: one definition
for benchmarks/. Machine, versions and commit come from hamedge.bench.results, the same record
`hamedge bench` writes into results.json.

    from _common import ROOT, run_record, record_line, time_calls
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def run_record(**extra: Any) -> dict[str, Any]:
    """Date (UTC), commit, machine (CPU model, usable cores, SIMD flags, GPU), versions and the
    1-minute load average now; ``extra`` is added as is."""
    from hamedge.bench.results import git_commit, machine_info, versions

    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(ROOT), "machine": machine_info(), "versions": versions(),
            "load_average_1min": load_average(), **extra}


def record_line(record: dict[str, Any]) -> str:
    """One Markdown line saying where and when a result was measured."""
    machine = record["machine"]
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    load = record.get("load_average_1min")
    return (f"{record['date']}, commit {record['commit'] or 'unknown'}, {machine['cpu']}, "
            f"{machine['cores']} usable cores{gpu}; 1-minute load average "
            f"{'n/a' if load is None else load} (the machine is shared with other work: absolute "
            "numbers are pessimistic, ratios measured side by side in one run hold better).")


def time_calls(fn: Callable[[], Any], seconds: float, min_calls: int = 3,
               warmup: int = 2) -> np.ndarray:
    """Wall-clock seconds of each call of ``fn`` after ``warmup`` untimed calls, calling until
    ``seconds`` have passed and at least ``min_calls`` were timed."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)
