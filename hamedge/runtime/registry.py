"""The one table of backends: name -> the class that implements it, imported only when asked for.

Importing this module imports no backend module (so never torch, TensorRT or OpenVINO). Each
backend's facts (precisions, devices, options, the package it needs) are class attributes of its
``Backend`` subclass; select, the CLI, the Python API and the bench all read them through here.
"""

from __future__ import annotations

import importlib
import importlib.util

from hamedge.bundle import PRECISIONS
from hamedge.errors import HamedgeError

# name -> "module:Class", in the order help texts and the bench list them.
BACKENDS: dict[str, str] = {
    "onnxruntime": "hamedge.runtime.onnxruntime:OnnxRuntimeBackend",
    "openvino": "hamedge.runtime.openvino:OpenVINOBackend",
    "tensorrt": "hamedge.runtime.tensorrt:TensorRTBackend",
    "torch": "hamedge.runtime.torch_backend:TorchBackend",
}
AUTO = "auto"


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backend_choices() -> tuple[str, ...]:
    """What --backend accepts: auto, then every registered backend."""
    return (AUTO, *BACKENDS)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise HamedgeError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def backend_class(name: str):
    """The Backend subclass registered as ``name`` (its module is imported now)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise HamedgeError(f"unknown backend {name!r}; choose from "
                           f"{', '.join(backend_choices())}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def missing_dependency(name: str) -> str | None:
    """Why backend ``name`` cannot open here because a package is missing, else None. Checked with
    importlib.util.find_spec, so the package itself is not imported."""
    cls = backend_class(name)
    for package in cls.requires:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{package} is not installed ({cls.install_hint})"
    return None


def help_text() -> str:
    """'auto | onnxruntime | ...' for --backend help."""
    return " | ".join(backend_choices())


def precision_help() -> str:
    return " | ".join(PRECISIONS)
