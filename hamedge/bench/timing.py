"""Timing configurations: model-only, end-to-end (file to full-size heatmap) and the pipelined
`hamedge infer` path, each entry compared with the eager baseline at the same batch and mode
(hamedge.bench.results.baseline_entry); how busy the machine was meanwhile."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hamedge.bench import latency as lat
from hamedge.bench.results import baseline_entry, config_name
from hamedge.errors import HamedgeError

# Pause before each measurement so the previous configuration's spinning worker threads (OpenMP,
# ONNX Runtime's pool) have gone to sleep and do not steal one of the few cores.
COOLDOWN_S = 0.1

Log = Callable[[str], None]


class Stages:
    """Wall time per stage of the end-to-end path, summed over calls (mean ms per call after)."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}
        self.calls = 0
        self._t = 0

    def start(self) -> None:
        self.calls += 1
        self._t = time.perf_counter_ns()

    def mark(self, stage: str) -> None:
        now = time.perf_counter_ns()
        self.ns[stage] = self.ns.get(stage, 0) + now - self._t
        self._t = now

    def mean_ms(self) -> dict[str, float]:
        return {k: v / 1e6 / max(self.calls, 1) for k, v in self.ns.items()}


def end_to_end(backend, files: list[Path], spec, stages: Stages | None = None) -> tuple[Any, np.ndarray]:
    """Files -> hamedge.io -> hamedge.preprocess -> backend -> full-size refined heatmaps: the
    deployed path, built from the same shared functions as `hamedge infer`."""
    from hamedge.io import read_image
    from hamedge.ops.refine import refine_spec
    from hamedge.preprocess import preprocess_batch

    stages = stages or Stages()
    stages.start()
    images = [read_image(f) for f in files]
    stages.mark("read")
    batch = preprocess_batch(images, spec, backend.input_channels)
    stages.mark("preprocess")
    out = backend.run(batch)
    stages.mark("run")
    heatmaps = out.attention_maps if out.heatmaps_refined else refine_spec(out.attention_maps, spec)
    stages.mark("refine")
    return out, heatmaps


def rule_text(rule: lat.StopRule) -> str:
    parts = []
    if rule.iterations is not None:
        parts.append(f"{rule.iterations} iterations")
    if rule.seconds is not None:
        parts.append(f"{rule.seconds:g} s (at least {rule.min_iterations} iterations)")
    return " or ".join(parts) + ", whichever comes first" if len(parts) == 2 else parts[0]


def time_config(results, backend: str, precision: str, batch: int, mode: str, fn, rule, size,
                log: Log, baseline: bool = False, device_times: list[float] | None = None,
                stages: Stages | None = None) -> None:
    """Time ``fn`` (one call = one batch) and append the entry. ``device_times``, filled by the
    caller's ``fn`` from Backend.last_inference_time() (GPU backends), splits each call into
    device and host time: the timed calls are its last ``samples`` entries."""
    time.sleep(COOLDOWN_S)
    stats = lat.measure(fn, batch, rule)
    if device_times:
        timed = device_times[-stats.samples:]
        stats.device_ms = float(np.mean(timed)) * 1e3
        stats.host_ms = max(stats.mean_ms - stats.device_ms, 0.0)
    entry = {"backend": backend, "precision": precision, "batch": batch, "mode": mode,
             "baseline": baseline, "stats": stats.to_dict(), "size_bytes": size}
    if stages is not None:
        entry["stages_ms"] = stages.mean_ms()  # mean per call, warm-up calls included
    results["latency"].append(entry)
    base = None if baseline else baseline_entry(results, batch, mode)
    versus = f"  {stats.throughput / base['stats']['throughput']:.2f}x eager" if base else ""
    log(f"  {config_name(backend, precision):22s} b{batch:<3d} {mode:5s} median "
        f"{stats.median_ms:9.2f} ms  {stats.throughput:8.2f} img/s  ({stats.samples} samples){versus}")


def model_only(backend, batch: np.ndarray) -> tuple[Callable[[], None], list[float] | None]:
    """One call of the network alone, and the device times it records (None on a CPU, where
    the whole call is host time)."""
    if backend.on_cpu:
        return (lambda: backend.run(batch)), None
    times: list[float] = []

    def run() -> None:
        backend.run(batch)
        times.append(backend.last_inference_time())

    return run, times


def time_infer(results, backend, files: list[Path], batch: int, rule: lat.StopRule, size,
               out: Path, log: Log) -> None:
    """Mode "infer": throughput of `hamedge infer`'s pipelined path (hamedge.pipeline: reader
    threads decode and preprocess while the backend runs; predictions with boxes, heatmaps
    refined for the positive findings; no files written) over max(4 x batch, 16) files, with
    ``backend`` opened for throughput as `hamedge infer` opens it. One
    sample = one whole run, so a few runs suffice (the figure is a throughput)."""
    import itertools
    import shutil
    import tempfile

    from hamedge.pipeline.run import InferOptions, run_inference

    count = max(4 * batch, 16)
    folder = Path(tempfile.mkdtemp(prefix=".bench-infer-", dir=out))
    try:
        files_n = itertools.islice(itertools.cycle(files), count)
        for i, f in enumerate(files_n):  # distinct names: the pipeline skips duplicates
            (folder / f"{i:04d}{Path(f).suffix}").symlink_to(Path(f).resolve())
        options = InferOptions(batch=batch, heatmaps="none")  # readers: one per usable core, as infer
        infer_rule = lat.StopRule(iterations=min(rule.iterations or 3, 3), warmup=min(rule.warmup, 1))

        def run() -> None:
            summary = run_inference([folder], backend, None, options)
            if summary.ok != count:
                raise HamedgeError(f"bench infer run: {summary.failed} of {count} files failed")

        time.sleep(COOLDOWN_S)
        stats = lat.measure(run, count, infer_rule)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["latency"].append({"backend": backend.name, "precision": backend.precision,
                               "batch": batch, "mode": "infer", "baseline": False,
                               "stats": stats.to_dict(), "size_bytes": size, "files_per_call": count})
    base = baseline_entry(results, batch, "e2e")
    versus = f"  {stats.throughput / base['stats']['throughput']:.2f}x eager e2e" if base else ""
    log(f"  {config_name(backend.name, backend.precision):22s} b{batch:<3d} infer "
        f"{stats.ms_per_image:9.2f} ms/img {stats.throughput:8.2f} img/s  ({count} files x "
        f"{stats.samples}){versus}")


# -- how busy the machine was -------------------------------------------------------------------
def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_snapshot() -> tuple[int, int, float] | None:
    """(all CPUs' busy jiffies, all CPUs' total jiffies, this process's CPU seconds), Linux only."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    total = sum(fields)
    idle = fields[3] + fields[4]  # idle + iowait
    t = os.times()
    return total - idle, total, t.user + t.system


def other_cpu_share(before, after) -> float | None:
    """Share of the machine's CPU time that *other* processes used between two snapshots."""
    if before is None or after is None:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy, total = after[0] - before[0], after[1] - before[1]
    own = (after[2] - before[2]) * hz
    if total <= 0:
        return None
    return max(0.0, min(1.0, (busy - own) / total))


def check_load(results: dict[str, Any], load_start: float | None, cpu_start) -> None:
    """Record how busy the machine was during the timings. Other processes steal cores from
    multi-threaded runtimes unevenly (PyTorch's OpenMP threads suffer most), so say so."""
    share = other_cpu_share(cpu_start, cpu_snapshot())
    results["machine"]["load_average"] = {"start": load_start, "end": load_average()}
    results["machine"]["other_processes_cpu_share"] = share
    if share is not None and share > 0.15:
        results["notes"].append(
            f"the machine was busy during the timings: other processes used {100 * share:.0f}% of "
            f"its CPU time, so these latencies are pessimistic and the speed-ups unreliable "
            f"(PyTorch suffers most); re-run on an idle machine")
