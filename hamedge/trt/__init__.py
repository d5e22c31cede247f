"""TensorRT for bundles, in modules that import in one direction only:

- ``engines``: probing (TensorRT version, GPU), engine records (which one runs here), plan names,
  the batch profile, the timing-cache location; plain Python;
- ``cuda``: CUDA buffers, streams, graphs and events through cuda-python or PyCUDA;
- ``build``: the engine builder (imports engines);
- ``compat``: the static ONNX-parser compatibility check run at export.
The runtime backend (hamedge.runtime.tensorrt) imports these, never the reverse. `import
hamedge.trt` never imports tensorrt; the builder imports it when called and raises
BackendUnavailable (one line) where TensorRT or a GPU is absent."""

from __future__ import annotations

from typing import Any


def build_engine(bundle, precision: str = "fp16", **kwargs: Any):
    """See hamedge.trt.build.build_engine."""
    from hamedge.trt.build import build_engine as _build

    return _build(bundle, precision=precision, **kwargs)


__all__ = ["build_engine"]
