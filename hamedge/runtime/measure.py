"""Choices made by measuring on this machine, remembered under hamedge.cache's root.

`--backend auto` choosing between CPU runtimes, and ONNX Runtime (CPU) and OpenVINO each choosing
between a bundle's two INT8 graphs, all time the candidates once on a fixed batch and keep the answer in
<cache>/measured/<key hash>.json, keyed by everything the answer depends on (the graph files'
sha256, the CPU, the core count, the runtime versions, the precision); a changed key measures
again. No torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

WARMUP = 1
ITERATIONS = 5  # a first auto run on a large model should not take minutes


@dataclass(frozen=True)
class Choice:
    chosen: str
    ms: dict[str, float]  # median ms per call of each candidate that opened
    cached: bool
    failures: dict[str, str]  # candidates that could not open, and why

    def reason(self, what: str) -> str:
        timings = ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(self.ms.items(), key=lambda kv: kv[1]))
        where = "remembered from an earlier measurement" if self.cached else "measured now"
        return f"{what}: {timings} per batch-1 call on this CPU ({where})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The x86 feature flags of this CPU (empty where /proc/cpuinfo is absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _cache_file(key: dict) -> Path:
    from hamedge.cache import cache_root

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "measured" / f"{digest}.json"


def median_ms(run: Callable[[], object], warmup: int = WARMUP, iterations: int = ITERATIONS) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def time_backend(opened) -> float:
    """Median ms of one batch-1 call of an opened Backend on a fixed random image; closes it."""
    with opened:
        batch = np.random.default_rng(0).standard_normal((1, *opened.input_shape)).astype(np.float32)
        return median_ms(lambda: opened.run(batch))


def fastest(key: dict, candidates: dict[str, Callable[[], object]], remember: bool = True) -> Choice:
    """The candidate that runs a batch-1 call fastest. ``candidates``: name -> a function that
    opens it as a Backend (raising HamedgeError when it cannot open here). A remembered answer
    for the same ``key`` is reused."""
    from hamedge.errors import HamedgeError
    from hamedge.fsutil import write_text

    key = {**key, "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0))
           if hasattr(os, "sched_getaffinity") else os.cpu_count(), "candidates": sorted(candidates)}
    path = _cache_file(key)
    if remember and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") == key and saved.get("chosen") in candidates:
                return Choice(saved["chosen"], saved["ms"], True, saved.get("failures", {}))
        except (OSError, ValueError):
            pass
    ms: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name, open_call in candidates.items():  # one at a time: they share the cores
        try:
            ms[name] = time_backend(open_call())
        except HamedgeError as exc:
            failures[name] = str(exc)
    if not ms:
        raise HamedgeError("no candidate could run: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    chosen = min(ms, key=ms.get)
    if remember:
        try:
            write_text(path, json.dumps({"key": key, "chosen": chosen, "ms": ms,
                                         "failures": failures}, indent=1) + "\n")
        except OSError:
            pass  # a read-only cache only costs a measurement next time
    return Choice(chosen, ms, False, failures)


def fastest_int8(bundle, backend: str, key: dict,
                 open_graph: Callable[[Path], object]) -> tuple[Path, Choice | None]:
    """The bundle's INT8 graph that ``backend`` runs fastest here, among those its export guard
    passed for that backend's arithmetic, and the measurement (None when only one competes).
    ``open_graph(path)`` opens one graph as a Backend; ``key`` says what else the answer depends
    on (runtime version, device, threads)."""
    from hamedge.bundle import INT8_GRAPHS
    from hamedge.errors import HamedgeError

    files = [rel for rel in INT8_GRAPHS.values() if bundle.has(rel)]
    if not files:
        return bundle.path_for("int8", "cpu"), None  # raises the bundle's one-line error
    refusals = [bundle.guard_refusal(backend, "int8", rel) for rel in files]
    if all(refusals):
        raise HamedgeError(refusals[0])
    files = [rel for rel, refusal in zip(files, refusals) if not refusal]
    if len(files) == 1:
        return bundle.root / files[0], None
    key = {"choice": f"{backend} int8 graph", **key, "graphs": {f: bundle.files[f] for f in files}}
    choice = fastest(key, {f: (lambda f=f: open_graph(bundle.root / f)) for f in files})
    return bundle.root / choice.chosen, choice
