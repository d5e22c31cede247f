"""The bench results document (results.json): one plain JSON-able dict so two runs compare.

Layout (format "hamedge-bench/1"):
  created, commit, machine {platform, cpu, cores, gpu, ...}, versions {python, numpy, ...},
  model {bundle, arch, output_stride, input_size, ...}, settings {...}, budget {...},
  latency: [{backend, precision, batch, mode ("model" | "e2e" | "infer"), baseline,
             stats {LatencyStats}, speedup (vs the eager baseline at the same batch and mode;
             "infer", the pipelined path, vs eager "e2e"), size_bytes}],
  accuracy: [{backend, precision, reference, mean_auc, class_auc {name: auc}, anomaly_auc,
              tiou {t: value}, tior {t: value}, agreement {...}, delta {...}, within_budget,
              budget_failures [...]}],
  overlays: [{image, config, file}], notes: [str]
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from hamedge.bundle import REDUCED_FLOAT
from hamedge.compare import Budget
from hamedge.runtime import measure
from hamedge.errors import HamedgeError

FORMAT = "hamedge-bench/1"
BASELINE_BACKEND = "torch-eager"  # the reference code's way: PIL preprocessing + model(x) forward



def config_name(backend: str, precision: str) -> str:
    return f"{backend}/{precision}"


def cpu_flags() -> list[str]:
    """The SIMD flags that decide INT8 and bf16 speed on x86 (VNNI, AMX, AVX-512 BF16 or not)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8")
    flags = measure.cpu_flags()
    return [f for f in wanted if f in flags]


def gpu_model() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": measure.cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": usable_cores(),
        "gpu": gpu_model(),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("hamedge", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "onnx",
                 "tensorrt",
                 "opencv-python-headless", "scikit-learn"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return {k: v for k, v in found.items() if v is not None or k in ("torch", "onnxruntime")}


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the checkout hamedge runs from (None outside a git checkout)."""
    here = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def new_results() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(),
        "versions": versions(),
        "model": {},
        "settings": {},
        "budget": Budget().to_dict(),
        "latency": [],
        "accuracy": [],
        "overlays": [],
        "notes": [],
    }


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HamedgeError(f"no bench results at {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise HamedgeError(f"cannot read bench results {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HamedgeError(f"{path} is not a hamedge bench results file (format {FORMAT})")
    return data


def baseline_entry(results: dict[str, Any], batch: int, mode: str) -> dict[str, Any] | None:
    for entry in results["latency"]:
        if entry.get("baseline") and entry["batch"] == batch and entry["mode"] == mode:
            return entry
    return None


def onnxruntime_entry(results: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any] | None:
    """The ONNX Runtime entry to hold ``entry`` against: same batch, mode and precision (fp32 for
    the reduced float precisions ONNX Runtime does not run)."""
    precision = "fp32" if entry["precision"] in REDUCED_FLOAT else entry["precision"]
    for other in results["latency"]:
        if (other["backend"] == "onnxruntime" and other["precision"] == precision
                and other["batch"] == entry["batch"] and other["mode"] == entry["mode"]):
            return other
    return None


def fill_speedups(results: dict[str, Any]) -> None:
    """Speed-up = configuration throughput / eager baseline throughput at the same batch and mode;
    vs_onnxruntime = throughput / ONNX Runtime's (onnxruntime_entry), so a user sees which
    runtime to deploy on their machine."""
    for entry in results["latency"]:
        # the pipelined "infer" mode is compared with the reference's end-to-end loop
        mode = "e2e" if entry["mode"] == "infer" else entry["mode"]
        base = baseline_entry(results, entry["batch"], mode)
        if base is None:
            entry["speedup"] = None
        else:
            entry["speedup"] = entry["stats"]["throughput"] / base["stats"]["throughput"]
        ort = None if entry.get("baseline") or entry["backend"] == "onnxruntime" else \
            onnxruntime_entry(results, entry)
        entry["vs_onnxruntime"] = (entry["stats"]["throughput"] / ort["stats"]["throughput"]
                                   if ort else None)
