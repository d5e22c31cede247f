"""Choosing and opening a backend. ``auto``: TensorRT when it is installed, a GPU is present and the
bundle has an engine built for that GPU and TensorRT version at the asked precision; otherwise
ONNX Runtime. (Auto never builds an engine: building takes minutes; ask for --backend tensorrt.)"""

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
                    gpu=None, trt_version=None, probe: bool = True) -> tuple[str, str]:
    """(backend name, why). ``gpu``/``trt_version`` are probed when ``probe`` (tests pass them)."""
    if backend != AUTO:
        backend_class(backend)  # an unknown name is refused here, in one line
    check_precision(precision)
    if backend != AUTO:
        return backend, "asked for"
    from hamedge.runtime import tensorrt as trt_backend

    if probe:
        trt_version = trt_backend.tensorrt_version()
        gpu = trt_backend.gpu_info() if trt_version else None
    record, reasons = trt_backend.select_engine(bundle.engines, gpu, trt_version, precision)
    if record is not None:
        return "tensorrt", f"engine {record.plan} matches {gpu.name}, TensorRT {trt_version}"
    return "onnxruntime", "; ".join(reasons)


def backend_options(cls, **options) -> dict:
    """The options ``cls`` takes, from a caller that passes the same options to every backend
    (the bench's thread count); those it does not take are dropped, not passed."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in params and v is not None}


def open_backend(bundle, backend: str = AUTO, precision: str = "fp32", device: str | None = None,
                 **options) -> Backend:
    """Open a bundle (a Bundle or its directory) on a backend. ``options`` are the backend's own
    keyword arguments (threads for onnxruntime/torch; max_batch, build, cuda_graphs for tensorrt;
    see each class); one the chosen backend does not take is refused, so a misspelt option never
    passes silently. An option given as None means the backend's default."""
    bundle = _as_bundle(bundle)
    name, why = resolve_backend(bundle, backend, precision)
    cls = backend_class(name)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k, v in options.items() if k not in params and v is not None)
    if unknown:
        takes = [p for p in params if p not in ("self", "bundle", "precision", "device")]
        raise HamedgeError(f"the {name} backend takes no option {unknown[0]!r} "
                           f"(it takes: {', '.join(takes) or 'none'})")
    opened = cls(bundle, precision=precision, device=device,
                 **{k: v for k, v in options.items() if v is not None})
    opened.selection_reason = why
    return opened
