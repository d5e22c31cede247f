"""Engine names, batch profiles and compatibility: the plain-Python part of TensorRT building.

A TensorRT plan runs only on the GPU model and TensorRT version that built it, so its file name
and its record (engines/<name>.json, hamedge.bundle.EngineRecord) carry both, and a mismatched
engine is refused with one line. No tensorrt import here: everything is tested without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hamedge.cache import cache_root
from hamedge.errors import BundleError, HamedgeError


def slug(text: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (safe in file names)."""
    out = re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-.")
    return out or "unknown"


@dataclass(frozen=True)
class BatchProfile:
    """The one optimisation profile: min <= opt <= max batch."""

    min: int = 1
    opt: int = 4
    max: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise HamedgeError(f"batch profile needs 1 <= min <= opt <= max, got "
                               f"{self.min}/{self.opt}/{self.max}")

    def shapes(self, channels: int, size: int) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) input shapes for the profile's set_shape call."""
        return tuple((b, channels, size, size) for b in (self.min, self.opt, self.max))


def engine_filename(gpu_name: str, trt_version: str, precision: str, profile: BatchProfile,
                    dla_core: int | None = None, builder: str = "tensorrt") -> str:
    """engines/<gpu-slug>_trt<version>_<precision>_b<min>-<opt>-<max>[_dla<n>].plan"""
    tag = "trt" if builder == "tensorrt" else "torchtrt"
    dla = f"_dla{dla_core}" if dla_core is not None else ""
    return (f"{slug(gpu_name)}_{tag}{slug(trt_version)}_{precision}_"
            f"b{profile.min}-{profile.opt}-{profile.max}{dla}.plan")


def check_engine_compatible(record, gpu, trt_version: str) -> None:
    """Raise BundleError (one line) unless ``record``'s engine was built for this GPU model and
    this TensorRT version. The rule itself is the runtime's (hamedge.runtime.tensorrt)."""
    from hamedge.runtime.tensorrt import engine_mismatch

    why = engine_mismatch(record, gpu, trt_version, record.precision)
    if why is not None:
        raise BundleError(f"{why}; rebuild it with `hamedge export --engine` on this machine")


def timing_cache_path(gpu_name: str, trt_version: str) -> Path:
    """Per-GPU, per-version timing cache outside the bundle (a cache, not an artefact)."""
    return cache_root() / "trt" / f"{slug(gpu_name)}_trt{slug(trt_version)}.timing-cache"
