"""`hamedge bench`: every backend and precision side by side against the PyTorch eager baseline.

One run: open the bundle; open every (backend, precision) this machine can run; time each at each
batch size, model-only and end-to-end (file to full-size heatmap), with the eager baseline timed in
the same run; score accuracy on the labelled set with hamedge.evaluation (the one driver) while
comparing each configuration's outputs with the fp32 reference; write results.json, results.md,
plots and report.html.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hamedge.bench import latency as lat
from hamedge.bench.eager import NAME as EAGER, EagerBaseline
from hamedge.bench.results import DEFAULT_BUDGET, config_name, fill_speedups, new_results, usable_cores
from hamedge.errors import BackendUnavailable, DataError, HamedgeError

# What each backend can run, in the order the report lists them.
BACKEND_PRECISIONS = {
    "onnxruntime": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
    "torch": ("fp32", "fp16"),
}
DEFAULT_BATCH_SIZES = (1, 8)
SYNTHETIC_COUNT = 48  # synthetic labelled images when no --data is given
OVERLAY_SIZE = 256  # px of each overlay tile on the page
# Pause before each measurement so the previous configuration's spinning worker threads (OpenMP,
# ONNX Runtime's pool) have gone to sleep and do not steal one of the few cores.
COOLDOWN_S = 0.1
SHARED_SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nih-samples" / "images"


@dataclass
class BenchOptions:
    model: Path | None = None  # bundle directory, or a checkpoint (.safetensors) to export first
    backends: list[str] | None = None  # None: every backend available here
    precisions: list[str] | None = None  # None: every precision each backend can run
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    data: Path | None = None  # labelled set (NIH layout); None: synthetic
    split: str | None = "test"
    samples: Path | None = None  # real X-rays: end-to-end inputs and overlays
    warmup: int = 3
    iterations: int | None = None
    seconds: float | None = None
    out: Path = Path("bench-results")
    accuracy: bool = True
    eval_limit: int | None = None
    synthetic_count: int = SYNTHETIC_COUNT
    threads: int | None = None
    budget: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BUDGET))
    model_name: str | None = None
    cache_dir: Path | None = None


Log = Callable[[str], None]


# -- model --------------------------------------------------------------------------------------
def cache_root(opts: BenchOptions) -> Path:
    if opts.cache_dir is not None:
        return Path(opts.cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hamedge"


def resolve_bundle(opts: BenchOptions, log: Log):
    """A Bundle for --model: a bundle directory as is; a checkpoint (or the default model when
    none is given) exported once with INT8 into the cache, keyed by the checkpoint's hash."""
    from hamedge.bundle import Bundle

    if opts.model is not None and Path(opts.model).is_dir():
        return Bundle.open(opts.model)
    from hamedge.model.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(opts.model)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]
    target = cache_root(opts) / "bench-bundles" / f"{ckpt.stem}-{digest}.hamedge"
    if target.is_dir():
        try:
            return Bundle.open(target)
        except HamedgeError:
            log(f"cached bundle {target} is unusable; exporting again")
    log(f"exporting {ckpt.name} (fp32 + INT8) to {target} once; later runs reuse it")
    return export_checkpoint(ckpt, target, log)


def export_checkpoint(ckpt: Path, target: Path, log: Log):
    """Export as `hamedge export --int8` does (calibrated, guarded). If INT8 cannot hold the
    budget, export it anyway without the guard: the bench measures it and marks the breach."""
    from hamedge.calibration import Int8BudgetError
    from hamedge.export import ExportOptions, export_bundle

    try:
        return export_bundle(ckpt, ExportOptions(out=target, force=True, int8=True), log=log)
    except Int8BudgetError as exc:
        log(f"INT8 export guard: {exc}; exporting INT8 without the guard so the bench can show it")
        return export_bundle(ckpt, ExportOptions(out=target, force=True, int8=True, guard=False),
                             log=log)


# -- data ---------------------------------------------------------------------------------------
def load_labelled(opts: BenchOptions, spec, work: Path, log: Log):
    """(labelled set, description). Synthetic images (hamedge.synth) when no --data is given."""
    from hamedge.datasets import load_dataset

    if opts.data is not None:
        labelled = load_dataset(Path(opts.data), split=opts.split, class_names=spec.class_names)
        text = f"{opts.data} (split {opts.split})"
    else:
        from hamedge import synth

        size = max(spec.input_size, 256)
        root = work / f"synthetic-{opts.synthetic_count}-{size}"
        if not (root / "dataset.json").is_file():
            log(f"generating {opts.synthetic_count} synthetic labelled X-rays in {root}")
            # In-process (workers=1): synth's worker pool forks, and forking a process that
            # already runs torch / ONNX Runtime threads can deadlock the children.
            synth.generate(root, opts.synthetic_count, seed=0, size=size, overwrite=True, workers=1)
        # Every image counts (split "all"): the bench only evaluates, nothing here was trained on.
        labelled = load_dataset(root, split="all", class_names=spec.class_names)
        text = f"synthetic: {len(labelled.records)} images from hamedge.synth (seed 0, {size} px)"
    if not labelled.records:
        raise DataError(f"no labelled images in {opts.data}")
    return labelled, text


def sample_files(opts: BenchOptions, labelled) -> tuple[list[Path], str]:
    """Image files for the end-to-end timing and the overlays: --samples, else the NIH samples
    beside the checkout when present, else the first images of the labelled set."""
    from hamedge.io import find_images

    folder = opts.samples
    if folder is None and SHARED_SAMPLES.is_dir():
        folder = SHARED_SAMPLES
    if folder is not None:
        files = sorted(Path(p) for p in find_images(folder)[0])
        if not files:
            raise DataError(f"no images in {folder}")
        return files, f"real X-rays from {folder}"
    if labelled is None:
        raise DataError("no X-rays to time end to end: give --samples DIR (or measure accuracy, "
                        "whose labelled images are used then)")
    files = [Path(r.path) for r in list(labelled.records)[:4]]
    return files, "images of the labelled set (no --samples given and no shared NIH samples found)"


def cycle(files: list[Path], n: int) -> list[Path]:
    return list(itertools.islice(itertools.cycle(files), n))


# -- configurations -----------------------------------------------------------------------------
def candidate_configs(opts: BenchOptions) -> tuple[list[tuple[str, str]], bool]:
    backends = opts.backends or list(BACKEND_PRECISIONS)
    for b in backends:
        if b not in BACKEND_PRECISIONS:
            raise HamedgeError(f"unknown backend {b!r}; choose from {', '.join(BACKEND_PRECISIONS)}")
    for p in opts.precisions or []:
        if p not in ("fp32", "fp16", "int8"):
            raise HamedgeError(f"unknown precision {p!r}; choose from fp32, fp16, int8")
    explicit = opts.backends is not None or opts.precisions is not None
    pairs = [(b, p) for b in backends for p in BACKEND_PRECISIONS[b]
             if opts.precisions is None or p in opts.precisions]
    return pairs, explicit


def open_config(bundle, backend: str, precision: str, threads: int | None):
    """Open one configuration, or raise HamedgeError saying why it cannot run here."""
    from hamedge.runtime import open_backend

    if backend == "tensorrt":
        from hamedge.runtime.tensorrt import gpu_info, tensorrt_version

        if tensorrt_version() is None:
            raise BackendUnavailable("TensorRT is not installed")
        if gpu_info() is None:
            raise BackendUnavailable("no CUDA GPU")
    if precision not in bundle.precisions:
        raise HamedgeError(f"the bundle has no {precision} graph")
    return open_backend(bundle, backend, precision, threads=threads)


def graph_size(bundle, backend) -> int | None:
    path = getattr(backend, "model_path", None)
    if path is None and backend.name == "torch":
        path = bundle.weights_path
    if path is None and backend.name == "tensorrt":
        path = bundle.engine_path(backend.record)
    return Path(path).stat().st_size if path is not None else None


# -- end-to-end ---------------------------------------------------------------------------------
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


def device_probe(backend, batch: np.ndarray) -> Callable[[], None] | None:
    """A call that runs only the device's compute for this batch (GPU backends), else None.
    Host time = the whole call's time minus this."""
    if backend.name == "tensorrt":
        backend.run(batch)  # sets the input shape

        def run() -> None:
            backend.context.execute_async_v3(backend.cuda.stream_handle)
            backend.cuda.synchronize()

        return run
    if backend.name == "torch" and str(backend.device).startswith("cuda"):
        torch = backend._torch
        x = torch.from_numpy(batch).to(backend.device, backend.dtype)

        def run() -> None:
            with torch.inference_mode():
                backend.model(x, refine=False)
            torch.cuda.synchronize()

        return run
    return None


# -- accuracy -----------------------------------------------------------------------------------
class Capture:
    """Wraps a predict_fn for hamedge.evaluation and keeps what agreement needs, in image order:
    probabilities and the binarised maps (all 1+K, packed bits)."""

    def __init__(self, predict: Callable, spec, refined: bool) -> None:
        self.predict, self.spec, self.refined = predict, spec, refined
        self.probs: list[np.ndarray] = []
        self.anomaly: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray):
        from hamedge.evaluation import binarise

        probs, anomaly, maps = self.predict(batch)
        self.probs.append(np.asarray(probs, np.float64).reshape(len(batch), -1))
        self.anomaly.append(np.asarray(anomaly, np.float64).reshape(len(batch)))
        binary = binarise(np.asarray(maps, np.float32), self.spec, self.refined)
        self.masks.extend(np.packbits(binary[i].reshape(binary.shape[1], -1), axis=1)
                          for i in range(len(batch)))
        return probs, anomaly, maps


def agreement(ref: Capture, got: Capture, spec) -> dict[str, Any]:
    """Agreement of a configuration with the fp32 reference on the same images."""
    p_ref, p = np.concatenate(ref.probs), np.concatenate(got.probs)
    a_ref, a = np.concatenate(ref.anomaly), np.concatenate(got.anomaly)
    thresholds = np.asarray(spec.thresholds)
    flips = int(((p >= thresholds) != (p_ref >= thresholds)).sum()
                + ((a >= spec.anomaly_threshold) != (a_ref >= spec.anomaly_threshold)).sum())
    ious = []
    for m_ref, m in zip(ref.masks, got.masks):
        r, g = np.unpackbits(m_ref, axis=1), np.unpackbits(m, axis=1)
        inter = (r & g).sum(axis=1)
        union = (r | g).sum(axis=1)
        ious.append(np.where(union == 0, 1.0, inter / np.maximum(union, 1)))
    ious = np.concatenate(ious) if ious else np.ones(1)
    return {"max_prob_diff": float(max(np.abs(p - p_ref).max(), np.abs(a - a_ref).max())),
            "mean_heatmap_iou": float(ious.mean()), "min_heatmap_iou": float(ious.min()),
            "flips": flips, "decisions": int(p.size + a.size)}


def accuracy_entry(backend: str, precision: str, evaluation: dict[str, Any],
                   reference: dict[str, Any] | None, agree: dict[str, Any] | None,
                   budget: dict[str, float]) -> dict[str, Any]:
    cls = evaluation["classification"]
    loc = evaluation.get("localisation")
    tiou, tior = {}, {}
    if loc and loc["mean"]["tiou"] is not None:
        tiou = {str(t): v for t, v in zip(loc["tiou_thresholds"], loc["mean"]["tiou"])}
        tior = {str(t): v for t, v in zip(loc["tior_thresholds"], loc["mean"]["tior"])}
    entry = {"backend": backend, "precision": precision, "reference": reference is None,
             "mean_auc": cls.get("mean_auc"), "anomaly_auc": cls.get("anomaly_auc"),
             "class_auc": _class_auc(cls), "tiou": tiou, "tior": tior,
             "class_tiou_0.3": _class_tiou(loc, spec_names=list(_class_auc(cls))),
             "box_images": loc.get("box_images") if loc else 0,
             "images": evaluation.get("num_images"), "agreement": agree or {}, "delta": {},
             "within_budget": None, "budget_failures": []}
    if reference is not None:
        d_auc = _diff(entry["mean_auc"], reference["mean_auc"])
        d_tiou = _diff(tiou.get("0.3"), (reference["tiou"] or {}).get("0.3"))
        entry["delta"] = {"mean_auc": d_auc, "tiou_0.3": d_tiou,
                          "anomaly_auc": _diff(entry["anomaly_auc"], reference["anomaly_auc"])}
        failures = []
        if d_auc is not None and d_auc < -budget["mean_auc_drop"]:
            failures.append(f"mean AUC {d_auc:+.4f} (budget -{budget['mean_auc_drop']})")
        if d_tiou is not None and d_tiou < -budget["tiou_0.3_drop"]:
            failures.append(f"T(IoU=0.3) {d_tiou:+.4f} (budget -{budget['tiou_0.3_drop']})")
        entry["within_budget"] = not failures
        entry["budget_failures"] = failures
    return entry


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _class_tiou(loc: dict[str, Any] | None, spec_names: list[str]) -> dict[str, float | None]:
    from hamedge.metrics import tiou_at

    if not loc:
        return {}
    return {name: tiou_at(loc, 0.3, name) for name in spec_names}


def _class_auc(cls: dict[str, Any]) -> dict[str, float | None]:
    return dict(cls.get("auc") or {})


# -- the run ------------------------------------------------------------------------------------
def run_bench(opts: BenchOptions, log: Log = print) -> dict[str, Any]:
    from hamedge.preprocess import preprocess_batch
    from hamedge.io import read_image

    rule = lat.StopRule.from_options(opts.warmup, opts.iterations, opts.seconds)
    if not opts.batch_sizes or any(b < 1 for b in opts.batch_sizes):
        raise HamedgeError("--batch-sizes must be positive integers")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = opts.threads or usable_cores()
    results = new_results()
    results["budget"] = dict(opts.budget)

    bundle = resolve_bundle(opts, log)
    spec = bundle.spec
    results["model"] = {
        "name": opts.model_name or (Path(opts.model).name if opts.model else "default model"),
        "bundle": str(bundle.root), "arch": spec.arch, "output_stride": spec.output_stride,
        "dilation": spec.dilation, "input_size": spec.input_size, "classes": spec.num_classes,
        "graph": bundle.graph.to_dict(), "precisions": list(bundle.precisions),
        "checkpoint_sha256": bundle.provenance.get("checkpoint_sha256"),
    }
    if bundle.weights_path is None:
        raise HamedgeError(f"bundle {bundle.root} has no weights.safetensors: the eager baseline "
                           "needs the checkpoint (re-export the bundle)")
    labelled, data_text = None, "none (accuracy not measured)"
    if opts.accuracy:
        labelled, data_text = load_labelled(opts, spec, cache_root(opts) / "bench-data", log)
    files, sample_text = sample_files(opts, labelled)
    results["settings"] = {
        "warmup": opts.warmup, "stop_rule": rule.to_dict(), "stop_rule_text": _rule_text(rule),
        "batch_sizes": list(opts.batch_sizes), "threads": threads, "data": str(opts.data or ""),
        "data_description": data_text, "samples": [str(f) for f in files],
        "overlay_source": f"Overlays on {sample_text}.", "e2e_inputs": sample_text,
    }

    # Configurations: the eager baseline first, then whatever opens here.
    eager = EagerBaseline(bundle.weights_path, spec, threads=threads)
    log(f"baseline: PyTorch eager fp32 on {eager.device} ({threads} CPU threads)")
    results["settings"]["eager_device"] = eager.device
    results["settings"]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)")
    pairs, explicit = candidate_configs(opts)
    opened = []
    for backend, precision in pairs:
        try:
            opened.append(open_config(bundle, backend, precision, threads))
        except HamedgeError as exc:
            text = f"{backend}/{precision} not run: {exc}"
            if explicit:
                log(text)
            results["notes"].append(text)
    if not opened:
        raise BackendUnavailable("none of the asked backends/precisions can run here")
    log("configurations: " + ", ".join(config_name(b.name, b.precision) for b in opened))

    images = [read_image(f) for f in files]
    load_start, cpu_start = load_average(), cpu_snapshot()
    for batch_size in opts.batch_sizes:
        chunk = cycle(files, batch_size)
        pics = [images[files.index(f)] for f in chunk]
        eager_batch = np.stack([_ref_pre(f, spec) for f in chunk])
        _time(results, EAGER, "fp32", batch_size, "model", eager.model_only_fn(eager_batch), rule,
              eager.size_bytes, log, baseline=True)
        stages = Stages()
        _time(results, EAGER, "fp32", batch_size, "e2e", lambda: eager.end_to_end(chunk, stages),
              rule, eager.size_bytes, log, baseline=True, stages=stages)
        for backend in opened:
            batch = preprocess_batch(pics, spec, backend.input_channels)
            probe = device_probe(backend, batch)
            _time(results, backend.name, backend.precision, batch_size, "model",
                  lambda: backend.run(batch), rule, graph_size(bundle, backend), log, probe=probe)
            stages = Stages()
            _time(results, backend.name, backend.precision, batch_size, "e2e",
                  lambda: end_to_end(backend, chunk, spec, stages), rule, graph_size(bundle, backend),
                  log, stages=stages)
        for backend in opened:
            _time_infer(results, backend, files, batch_size, rule, graph_size(bundle, backend), out, log)
    fill_speedups(results)
    check_load(results, load_start, cpu_start)

    if opts.accuracy:
        run_accuracy(results, opts, eager, opened, labelled, spec, log)
    write_overlays(results, out, eager, opened, files, spec)
    for backend in opened:
        backend.close()
    calibration = bundle.calibration
    if calibration:
        results["calibration"] = calibration
    return results


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


def _time_infer(results, backend, files: list[Path], batch: int, rule: lat.StopRule, size,
                out: Path, log) -> None:
    """Mode "infer": throughput of `hamedge infer`'s pipelined path (hamedge.pipeline: reader
    threads decode and preprocess while the backend runs; predictions with boxes, heatmaps
    refined for the positive findings; no files written) over max(4 x batch, 16) files. One
    sample = one whole run, so a few runs suffice (the figure is a throughput)."""
    import shutil
    import tempfile

    from hamedge.pipeline.run import InferOptions, run_inference

    count = max(4 * batch, 16)
    folder = Path(tempfile.mkdtemp(prefix=".bench-infer-", dir=out))
    try:
        for i, f in enumerate(cycle(files, count)):  # distinct names: the pipeline skips duplicates
            (folder / f"{i:04d}{Path(f).suffix}").symlink_to(Path(f).resolve())
        options = InferOptions(batch=batch, workers=2, heatmaps="none")
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
    base = next((e for e in results["latency"] if e.get("baseline") and e["batch"] == batch
                 and e["mode"] == "e2e"), None)
    versus = f"  {stats.throughput / base['stats']['throughput']:.2f}x eager e2e" if base else ""
    log(f"  {config_name(backend.name, backend.precision):22s} b{batch:<3d} infer "
        f"{stats.ms_per_image:9.2f} ms/img {stats.throughput:8.2f} img/s  ({count} files x "
        f"{stats.samples}){versus}")


def _ref_pre(path: Path, spec) -> np.ndarray:
    from hamedge.bench.eager import reference_preprocess

    return reference_preprocess(path, spec)


def _rule_text(rule: lat.StopRule) -> str:
    parts = []
    if rule.iterations is not None:
        parts.append(f"{rule.iterations} iterations")
    if rule.seconds is not None:
        parts.append(f"{rule.seconds:g} s (at least {rule.min_iterations} iterations)")
    return " or ".join(parts) + ", whichever comes first" if len(parts) == 2 else parts[0]


def _time(results, backend: str, precision: str, batch: int, mode: str, fn, rule, size, log,
          baseline: bool = False, probe=None, stages: Stages | None = None) -> None:
    time.sleep(COOLDOWN_S)
    stats = lat.measure(fn, batch, rule)
    if probe is not None:
        device = lat.measure(probe, batch, rule)
        stats.device_ms = device.mean_ms
        stats.host_ms = max(stats.mean_ms - device.mean_ms, 0.0)
    entry = {"backend": backend, "precision": precision, "batch": batch, "mode": mode,
             "baseline": baseline, "stats": stats.to_dict(), "size_bytes": size}
    if stages is not None:
        entry["stages_ms"] = stages.mean_ms()  # mean per call, warm-up calls included
    results["latency"].append(entry)
    base = None if baseline else next((e for e in results["latency"] if e.get("baseline")
                                       and e["batch"] == batch and e["mode"] == mode), None)
    versus = f"  {stats.throughput / base['stats']['throughput']:.2f}x eager" if base else ""
    log(f"  {config_name(backend, precision):22s} b{batch:<3d} {mode:5s} median "
        f"{stats.median_ms:9.2f} ms  {stats.throughput:8.2f} img/s  ({stats.samples} samples){versus}")


def run_accuracy(results, opts, eager, opened, labelled, spec, log) -> None:
    from hamedge.evaluation import run_evaluation

    batch = min(max(opts.batch_sizes), 16)
    log(f"accuracy on {len(labelled.records)} labelled images")
    ref_cap = Capture(eager.predict, spec, refined=True)
    ref_eval = run_evaluation(ref_cap, labelled, spec, batch_size=batch, limit=opts.eval_limit,
                              channels=spec.in_channels, heatmaps_refined=True)
    reference = accuracy_entry(EAGER, "fp32", ref_eval, None, None, opts.budget)
    results["accuracy"].append(reference)
    for backend in opened:
        cap = Capture(lambda b, be=backend: _raw(be.run(b)), spec, refined=backend.heatmaps_refined)
        ev = run_evaluation(cap, labelled, spec, batch_size=batch, limit=opts.eval_limit,
                            channels=backend.input_channels, heatmaps_refined=backend.heatmaps_refined)
        entry = accuracy_entry(backend.name, backend.precision, ev, reference,
                               agreement(ref_cap, cap, spec), opts.budget)
        results["accuracy"].append(entry)
        log(f"  {config_name(backend.name, backend.precision):22s} mean AUC {_fmt(entry['mean_auc'])}"
            f"  within budget: {entry['within_budget']}")


def _raw(out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return out.class_probs, out.anomaly_prob, out.attention_maps


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_overlays(results, out: Path, eager, opened, files: list[Path], spec,
                   limit: int = 3) -> None:
    """For a few sample images: each configuration's heatmap of the finding the reference rates
    most likely, over the X-ray, side by side; white contour = the binarised map."""
    import cv2

    from hamedge import heatmap as hm
    from hamedge.fsutil import write_bytes
    from hamedge.io import read_image

    side = (OVERLAY_SIZE, OVERLAY_SIZE)
    for i, f in enumerate(files[:limit]):
        small = cv2.resize(hm.to_display(read_image(f)), side, interpolation=cv2.INTER_AREA)
        ref = eager.end_to_end([f])
        k = int(np.argmax(ref["class_probs"][0]))
        maps = {config_name(EAGER, "fp32"): (ref["heatmaps"][0, 1 + k], float(ref["class_probs"][0, k]))}
        for backend in opened:
            o, heat = end_to_end(backend, [f], spec)
            maps[config_name(backend.name, backend.precision)] = (heat[0, 1 + k],
                                                                  float(o.class_probs[0, k]))
        for name, (heat, prob) in maps.items():
            heat = np.asarray(heat, np.float32)
            tile = np.ascontiguousarray(hm.overlay(small, heat))
            mask = cv2.resize((heat >= spec.cam_threshold).astype(np.uint8), side,
                              interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, (255, 255, 255), 1)
            rel = f"overlays/{i:02d}_{name.replace('/', '_')}.png"
            write_bytes(out / rel, hm.encode_png(tile))
            results["overlays"].append({"image": Path(f).name, "config": name, "file": rel,
                                        "caption": f"{spec.class_names[k]} p={prob:.3f}"})


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, results.md, the plots and report.html under ``out`` (each written atomically)."""
    import json

    from hamedge.bench import html, plots, report
    from hamedge.fsutil import write_text

    out = Path(out)
    plot_files = plots.write_plots(results, out)
    results["plots"] = plot_files
    paths = {"json": out / "results.json", "md": out / "results.md", "html": out / "report.html"}
    write_text(paths["json"], json.dumps(results, indent=1, sort_keys=False, default=_json_default) + "\n")
    write_text(paths["md"], report.render_markdown(results))
    write_text(paths["html"], html.render_html(results, out, plot_files))
    return paths


def _json_default(value: Any):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
