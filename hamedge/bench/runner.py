"""`hamedge bench`: every backend and precision side by side against the PyTorch eager baseline.

One run: open the bundle; open every (backend, precision) this machine can run (bench.configs);
time each at each batch size, model-only and end-to-end (file to full-size heatmap), with the eager
baseline timed in the same run (bench.timing); score accuracy on the labelled set and compare each
configuration with the fp32 reference (bench.accuracy); overlays (bench.overlays); write
results.json, results.md, plots and report.html.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hamedge.bench import latency as lat
from hamedge.bench.accuracy import run_accuracy
from hamedge.bench.configs import artifact_size, candidate_configs, open_config
from hamedge.bench.eager import EagerBaseline
from hamedge.bench.eager import NAME as EAGER
from hamedge.bench.overlays import write_overlays
from hamedge.bench.results import config_name, fill_speedups, new_results, usable_cores
from hamedge.bench.timing import (Stages, check_load, cpu_snapshot, end_to_end, load_average,
                                  model_only, rule_text, time_config, time_infer)
from hamedge.compare import Budget
from hamedge.errors import BackendUnavailable, DataError, HamedgeError

DEFAULT_BATCH_SIZES = (1, 8)
SYNTHETIC_COUNT = 48  # synthetic labelled images when no --data is given


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
    budget: Budget = field(default_factory=Budget)
    model_name: str | None = None
    cache_dir: Path | None = None  # None: hamedge.cache's root


Log = Callable[[str], None]


# -- model --------------------------------------------------------------------------------------
def resolve_bundle(opts: BenchOptions, log: Log):
    """A Bundle for --model through hamedge.api's one resolution, with INT8. If INT8 cannot hold
    the budget it is exported anyway without the guard: the bench measures it and marks the breach."""
    from hamedge.calibration import Int8BudgetError
    from hamedge.api import resolve_bundle as resolve

    try:
        return resolve(opts.model, int8=True, cache=opts.cache_dir, log=log)
    except Int8BudgetError as exc:
        log(f"INT8 export guard: {exc}; exporting INT8 without the guard so the bench can show it")
        return resolve(opts.model, int8=True, int8_guard=False, cache=opts.cache_dir, log=log)


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
    """Image files for the end-to-end timing and the overlays: --samples, else the first images
    of the labelled set."""
    from hamedge.io import find_images

    folder = opts.samples
    if folder is not None:
        files = sorted(Path(p) for p in find_images(folder)[0])
        if not files:
            raise DataError(f"no images in {folder}")
        return files, f"real X-rays from {folder}"
    if labelled is None:
        raise DataError("no X-rays to time end to end: give --samples DIR (or measure accuracy, "
                        "whose labelled images are used then)")
    files = [Path(r.path) for r in list(labelled.records)[:4]]
    return files, "images of the labelled set (no --samples given)"


def cycle(files: list[Path], n: int) -> list[Path]:
    return list(itertools.islice(itertools.cycle(files), n))


# -- the run ------------------------------------------------------------------------------------
def run_bench(opts: BenchOptions, log: Log = print) -> dict[str, Any]:
    from hamedge.cache import cache_root
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess_batch

    rule = lat.StopRule.from_options(opts.warmup, opts.iterations, opts.seconds)
    if not opts.batch_sizes or any(b < 1 for b in opts.batch_sizes):
        raise HamedgeError("--batch-sizes must be positive integers")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = opts.threads or usable_cores()
    results = new_results()
    results["budget"] = opts.budget.to_dict()

    pairs, explicit = candidate_configs(opts.backends, opts.precisions)
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
        labelled, data_text = load_labelled(opts, spec, cache_root(opts.cache_dir) / "bench-data", log)
    files, sample_text = sample_files(opts, labelled)
    results["settings"] = {
        "warmup": opts.warmup, "stop_rule": rule.to_dict(), "stop_rule_text": rule_text(rule),
        "batch_sizes": list(opts.batch_sizes), "threads": threads, "data": str(opts.data or ""),
        "data_description": data_text, "samples": [str(f) for f in files],
        "overlay_source": f"Overlays on {sample_text}.", "e2e_inputs": sample_text,
    }

    # Configurations: the eager baseline first, then whatever opens here.
    eager = EagerBaseline(bundle.weights_path, spec, threads=threads)
    log(f"baseline: PyTorch eager fp32 on {eager.device} ({threads} CPU threads)")
    results["settings"]["eager_device"] = eager.device
    results["settings"]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)")
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
    folder_runs: dict = {}  # each configuration opened for throughput, for the "infer" mode
    for batch_size in opts.batch_sizes:
        chunk = cycle(files, batch_size)
        pics = [images[files.index(f)] for f in chunk]
        eager_batch = np.stack([_ref_pre(f, spec) for f in chunk])
        time_config(results, EAGER, "fp32", batch_size, "model", eager.model_only_fn(eager_batch),
                    rule, eager.size_bytes, log, baseline=True)
        stages = Stages()
        time_config(results, EAGER, "fp32", batch_size, "e2e",
                    lambda: eager.end_to_end(chunk, stages), rule, eager.size_bytes, log,
                    baseline=True, stages=stages)
        for backend in opened:
            batch = preprocess_batch(pics, spec, backend.input_channels)
            run, device_times = model_only(backend, batch)
            time_config(results, backend.name, backend.precision, batch_size, "model", run, rule,
                        artifact_size(backend), log, device_times=device_times)
            stages = Stages()
            time_config(results, backend.name, backend.precision, batch_size, "e2e",
                        lambda: end_to_end(backend, chunk, spec, stages), rule,
                        artifact_size(backend), log, stages=stages)
        for backend in opened:
            if backend not in folder_runs:  # as `hamedge infer` opens it
                folder_runs[backend] = open_config(bundle, backend.name, backend.precision,
                                                   threads, use="throughput")
            runner = folder_runs[backend]
            time_infer(results, runner, files, batch_size, rule, artifact_size(runner), out, log)
    for runner in folder_runs.values():
        runner.close()
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


def _ref_pre(path: Path, spec) -> np.ndarray:
    from hamedge.bench.eager import reference_preprocess

    return reference_preprocess(path, spec)


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
