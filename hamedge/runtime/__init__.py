"""Backends behind one interface: ``open_backend(bundle, backend, precision) -> Backend`` whose
``run(batch)`` returns ``RawOutputs``. No torch at import: torch and TensorRT are imported only by
the backends that need them, when they open."""

from hamedge.runtime.base import PRECISIONS, Backend, RawOutputs, TensorMeta
from hamedge.runtime.select import BACKENDS, open_backend, resolve_backend

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "RawOutputs", "TensorMeta", "open_backend",
           "resolve_backend"]
