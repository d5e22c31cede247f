"""What TensorRT engines are and where they may run: the plain-Python half of the TensorRT code.

- probing: the TensorRT version and this machine's GPU (never raise; None when absent);
- engine records: which record (hamedge.bundle.EngineRecord) fits this GPU, TensorRT version,
  precision and DLA core, and why the others do not (one line each);
- names and profiles: plan file names, the one batch profile, the timing-cache location.

A TensorRT plan runs only on the GPU model and TensorRT version that built it, so its file name
and its record carry both. Nothing here imports tensorrt at module level; everything is tested
without it. The builder (hamedge.trt.build) and the runtime backend (hamedge.runtime.tensorrt)
import this module, never the reverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hamedge.bundle import PLUGIN_GRAPH
from hamedge.cache import cache_root
from hamedge.errors import BundleError, HamedgeError

# DLA runs FP16 or INT8 only ("FP32 mode is not permitted": NVIDIA/TensorRT samples/common/common.h
# enableDLA, release/10.3).
DLA_PRECISIONS = ("fp16", "int8")


# -- probing (lazy, never raise) -------------------------------------------------------------------
def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except Exception:
        return None
    return str(trt.__version__)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"


def gpu_info(device: int = 0) -> GpuInfo | None:
    """The GPU's name and compute capability, through cuda-python, else PyCUDA; None without one.

    A cuda-python that imports but cannot reach the driver (cudaErrorInsufficientDriver when the
    bindings are newer than the driver, as a current cuda-python on JetPack 6; a RuntimeError
    "Failed to dlopen libcuda.so.1" from cuda-python 11.8 without a driver) is no answer: PyCUDA,
    built against the installed driver, is asked next."""
    from hamedge.trt.cuda import load_cudart

    cudart = load_cudart()
    if cudart is not None:
        try:
            err, props = cudart.cudaGetDeviceProperties(device)
            if int(err) == 0:
                name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
                return GpuInfo(name.strip("\x00 "), f"{props.major}.{props.minor}")
        except Exception:  # noqa: BLE001 - a driver-less cuda-python raises instead of returning
            pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return GpuInfo(str(dev.name()), f"{major}.{minor}")
    except Exception:  # noqa: BLE001 - no PyCUDA, no driver, no device: all mean "no GPU here"
        return None


def dla_cores() -> int:
    """How many DLA cores TensorRT sees here (0 without TensorRT or a DLA)."""
    try:
        import tensorrt as trt

        return int(trt.Runtime(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
    except Exception:  # noqa: BLE001
        return 0


# -- engine records: which one runs here -----------------------------------------------------------
def engine_mismatch(record, gpu: GpuInfo, trt_version: str, precision: str,
                    dla_core: int | None = None, fused_plugin: bool = False) -> str | None:
    """Why this engine record cannot run here (one line), or None when it fits.

    A plan runs only on the GPU model and TensorRT version that built it (TensorRT's rule); we
    compare the GPU name and compute capability, and the TensorRT major.minor.patch version. A
    DLA engine runs on the DLA core it was asked for; a GPU engine only when no core is asked.
    Engines with the fused-refinement plugin are taken only when asked for (``fused_plugin``).
    """
    if record.precision != precision:
        return f"engine {record.plan} is {record.precision}, not {precision}"
    if record.builder != "tensorrt":
        return f"engine {record.plan} was built by {record.builder}"
    if record.gpu_name != gpu.name or record.compute_capability != gpu.compute_capability:
        return (f"engine {record.plan} was built for {record.gpu_name} (sm {record.compute_capability}), "
                f"this GPU is {gpu.name} (sm {gpu.compute_capability})")
    if version_tuple(record.trt_version) != version_tuple(trt_version):
        return (f"engine {record.plan} was built with TensorRT {record.trt_version}, "
                f"this is TensorRT {trt_version}")
    if record.dla_core != dla_core:
        where = lambda core: "the GPU" if core is None else f"DLA core {core}"  # noqa: E731
        return f"engine {record.plan} runs on {where(record.dla_core)}, not {where(dla_core)}"
    if (record_plugin(record) is not None) != bool(fused_plugin):
        has = "has" if record_plugin(record) is not None else "has no"
        return f"engine {record.plan} {has} the fused-refinement plugin"
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """The major.minor.patch numbers of a TensorRT version ("10.3.0.30" -> (10, 3, 0)); a part
    without digits counts as 0."""
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def select_engine(records, gpu: GpuInfo | None, trt_version: str | None, precision: str,
                  dla_core: int | None = None, fused_plugin: bool = False):
    """(record or None, reasons): the first engine record that runs here, else why none does."""
    if trt_version is None:
        return None, ["TensorRT is not installed"]
    if gpu is None:
        return None, ["no CUDA GPU found"]
    reasons = []
    for record in records:
        why = engine_mismatch(record, gpu, trt_version, precision, dla_core, fused_plugin)
        if why is None:
            return record, []
        reasons.append(why)
    if not reasons:
        where = "" if dla_core is None else f" DLA core {dla_core}"
        fused = " fused-plugin" if fused_plugin else ""
        reasons.append(f"the bundle has no {precision}{where}{fused} engine")
    return None, reasons


def check_engine_compatible(record, gpu, trt_version: str) -> None:
    """Raise BundleError (one line) unless ``record``'s engine was built for this GPU model and
    this TensorRT version."""
    why = engine_mismatch(record, gpu, trt_version, record.precision, record.dla_core,
                          record_plugin(record) is not None)
    if why is not None:
        raise BundleError(f"{why}; rebuild it with `hamedge export --engine` on this machine")


def record_plugin(record) -> str | None:
    """The fused-refinement plugin an engine needs loaded before it is deserialised: "python"
    (tensorrt.plugin definitions, hamedge.kernels.trt_plugin), "library" (the C++ plugin library), or
    None for engines built from a standard-op graph."""
    kind = (record.extra or {}).get("fused_plugin")
    if kind is None and record.onnx_file == PLUGIN_GRAPH:
        return "python"
    return kind


# -- names and profiles ----------------------------------------------------------------------------
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

    @classmethod
    def for_dla(cls, batch: int) -> "BatchProfile":
        """DLA needs min = opt = max ("If run on DLA, minimum, optimum, and maximum dimensions
        must to be the same": NvInferRuntime.h IOptimizationProfile::setDimensions, release/10.3)."""
        return cls(batch, batch, batch)


def engine_filename(gpu_name: str, trt_version: str, precision: str, profile: BatchProfile,
                    dla_core: int | None = None, plugin: bool = False) -> str:
    """engines/<gpu-slug>_trt<version>_<precision>_b<min>-<opt>-<max>[_dla<n>][_plugin].plan"""
    dla = f"_dla{dla_core}" if dla_core is not None else ""
    fused = "_plugin" if plugin else ""
    return (f"{slug(gpu_name)}_trt{slug(trt_version)}_{precision}_"
            f"b{profile.min}-{profile.opt}-{profile.max}{dla}{fused}.plan")


def timing_cache_path(gpu_name: str, trt_version: str) -> Path:
    """Per-GPU, per-version timing cache outside the bundle (a cache, not an artefact)."""
    return cache_root() / "trt" / f"{slug(gpu_name)}_trt{slug(trt_version)}.timing-cache"
