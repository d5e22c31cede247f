"""TensorRT engine building for bundles. `import hamedge.trt` never imports tensorrt; the builder
imports it when called and raises BackendUnavailable (one line) where TensorRT or a GPU is absent."""

from __future__ import annotations

from typing import Any


def build_engine(bundle, precision: str = "fp16", **kwargs: Any):
    """See hamedge.trt.build.build_engine."""
    from hamedge.trt.build import build_engine as _build

    return _build(bundle, precision=precision, **kwargs)


__all__ = ["build_engine"]
