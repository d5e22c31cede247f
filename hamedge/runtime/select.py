"""Choosing and opening a backend. ``auto``: TensorRT when it is installed, a GPU is present and the
bundle has an engine built for that GPU and TensorRT version at the asked precision (auto never
builds an engine: building takes minutes; ask for --backend tensorrt). Otherwise a CPU runtime: on
an x86 CPU with OpenVINO installed, whichever of ONNX Runtime and OpenVINO runs this bundle's graph
faster here (measured once, remembered: hamedge.runtime.measure); else ONNX Runtime."""

from __future__ import annotations

import inspect
import os

from hamedge.errors import HamedgeError
from hamedge.runtime.base import Backend
from hamedge.runtime.registry import AUTO, backend_choices, backend_class, check_precision

BACKENDS = backend_choices()


def _as_bundle(bundle):
    from hamedge.bundle import Bundle

    if isinstance(bundle, (str, os.PathLike)):
        return Bundle.open(bundle)
    return bundle


def resolve_backend(bundle, backend: str = AUTO, precision: str = "fp32",
                    gpu=None, trt_version=None, probe: bool = True,
                    device: str | None = None) -> tuple[str, str]:
    """(backend name, why). ``gpu``/``trt_version`` are probed and CPU runtimes measured when
    ``probe`` (tests pass them and skip the measurement)."""
    if backend != AUTO:
        backend_class(backend)  # an unknown name is refused here, in one line
    check_precision(precision)
    if backend != AUTO:
        return backend, "asked for"
    from hamedge.trt.engines import gpu_info, select_engine, tensorrt_version

    if probe:
        trt_version = tensorrt_version()
        gpu = gpu_info() if trt_version else None
    record, reasons = select_engine(bundle.engines, gpu, trt_version, precision)
    if record is not None:
        return "tensorrt", f"engine {record.plan} matches {gpu.name}, TensorRT {trt_version}"
    no_trt = "no TensorRT engine: " + "; ".join(reasons)
    if (device or "").lower().startswith("gpu"):  # OpenVINO's name for an Intel GPU
        return "openvino", f"--device {device} is an Intel GPU, which only OpenVINO runs; {no_trt}"
    if not probe or (device or "cpu").lower() not in ("cpu", AUTO):
        return "onnxruntime", no_trt
    return cpu_runtime(bundle, precision, no_trt)


def cpu_runtime(bundle, precision: str, context: str) -> tuple[str, str]:
    """ONNX Runtime, or OpenVINO where it is installed on an x86 CPU and measured faster."""
    from hamedge.runtime.measure import fastest, is_x86
    from hamedge.runtime.registry import missing_dependency

    if not is_x86():
        return "onnxruntime", f"{context}; not an x86 CPU, so no OpenVINO"
    missing = missing_dependency("openvino")
    if missing:
        return "onnxruntime", f"{context}; {missing}"
    import importlib.metadata as md

    versions = {}
    for package in ("onnxruntime", "openvino"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    graphs = {rel: sha for rel, sha in bundle.files.items() if rel.endswith(".onnx")}
    key = {"choice": "auto cpu runtime", "precision": precision, "graphs": graphs, **versions}
    candidates = {name: (lambda name=name: backend_class(name)(bundle, precision=precision))
                  for name in ("onnxruntime", "openvino")}
    choice = fastest(key, candidates)
    return choice.chosen, f"{choice.reason('fastest CPU runtime')}; {context}"


def backend_options(cls, **options) -> dict:
    """The options ``cls`` takes, from a caller that passes the same options to every backend
    (the bench's thread count); those it does not take are dropped, not passed."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in params and v is not None}


USES = ("latency", "throughput")


def open_backend(bundle, backend: str = AUTO, precision: str = "fp32", device: str | None = None,
                 use: str = "latency", **options) -> Backend:
    """Open a bundle (a Bundle or its directory) on a backend. ``options`` are the backend's own
    keyword arguments (threads for onnxruntime/torch; max_batch, build, cuda_graphs for tensorrt;
    see each class); one the chosen backend does not take is refused, so a misspelt option never
    passes silently. An option given as None means the backend's default. ``use``: what the
    caller does, "latency" (one call at a time: the API) or "throughput" (folder runs, serving);
    backends with such a hint (openvino) take it, the others ignore it."""
    if use not in USES:
        raise HamedgeError(f"unknown use {use!r} ({' or '.join(USES)})")
    bundle = _as_bundle(bundle)
    name, why = resolve_backend(bundle, backend, precision, device=device)
    cls = backend_class(name)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k, v in options.items() if k not in params and v is not None)
    if unknown:
        takes = [p for p in params if p not in ("self", "bundle", "precision", "device", "use")]
        raise HamedgeError(f"the {name} backend takes no option {unknown[0]!r} "
                           f"(it takes: {', '.join(takes) or 'none'})")
    if "use" in params:
        options["use"] = use
    opened = cls(bundle, precision=precision, device=device,
                 **{k: v for k, v in options.items() if v is not None})
    opened.selection_reason = why
    return opened
