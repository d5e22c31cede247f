"""Choosing and opening a backend. ``auto``: TensorRT when it is installed, a GPU is present and the
bundle has an engine built for that GPU and TensorRT version at the asked precision; otherwise
ONNX Runtime. (Auto never builds an engine: building takes minutes; ask for --backend tensorrt.)"""

from __future__ import annotations

import os

from hamedge.errors import HamedgeError
from hamedge.runtime.base import PRECISIONS, Backend

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def _as_bundle(bundle):
    from hamedge.bundle import Bundle

    if isinstance(bundle, (str, os.PathLike)):
        return Bundle.open(bundle)
    return bundle


def resolve_backend(bundle, backend: str = "auto", precision: str = "fp32",
                    gpu=None, trt_version=None, probe: bool = True) -> tuple[str, str]:
    """(backend name, why). ``gpu``/``trt_version`` are probed when ``probe`` (tests pass them)."""
    if backend not in BACKENDS:
        raise HamedgeError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise HamedgeError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if backend != "auto":
        return backend, "asked for"
    from hamedge.runtime import tensorrt as trt_backend

    if probe:
        trt_version = trt_backend.tensorrt_version()
        gpu = trt_backend.gpu_info() if trt_version else None
    record, reasons = trt_backend.select_engine(bundle.engines, gpu, trt_version, precision)
    if record is not None:
        return "tensorrt", f"engine {record.plan} matches {gpu.name}, TensorRT {trt_version}"
    return "onnxruntime", "; ".join(reasons)


def open_backend(bundle, backend: str = "auto", precision: str = "fp32", device: str | None = None,
                 **opts) -> Backend:
    """Open a bundle (a Bundle or its directory) on a backend. Options go to the backend
    (threads for onnxruntime/torch; max_batch, build, cuda_graphs for tensorrt)."""
    bundle = _as_bundle(bundle)
    name, why = resolve_backend(bundle, backend, precision)
    if name == "onnxruntime":
        from hamedge.runtime.onnxruntime import OnnxRuntimeBackend as cls
    elif name == "tensorrt":
        from hamedge.runtime.tensorrt import TensorRTBackend as cls
    else:
        from hamedge.runtime.torch_backend import TorchBackend as cls
    opened = cls(bundle, precision=precision, device=device, **opts)
    opened.selection_reason = why
    return opened
