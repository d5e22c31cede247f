"""Backends behind one interface: ``open_backend(bundle, backend, precision) -> Backend`` whose
``run(batch)`` returns ``RawOutputs``. The registry (hamedge.runtime.registry) names every backend;
no torch, TensorRT or OpenVINO at import: each is imported only by its backend, when it opens."""

from hamedge.runtime.base import PRECISIONS, Backend, RawOutputs, TensorMeta
from hamedge.runtime.registry import backend_class, backend_names, missing_dependency
from hamedge.runtime.select import BACKENDS, backend_options, open_backend, resolve_backend

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "RawOutputs", "TensorMeta", "backend_class",
           "backend_names", "backend_options", "missing_dependency", "open_backend",
           "resolve_backend"]
