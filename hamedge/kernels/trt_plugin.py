"""FusedRefine as a Python-defined TensorRT plugin (``tensorrt.plugin``, TensorRT >= 10.6).

- ``@trtp.register("hamedge::FusedRefine")``: shape/type function (B, K, h, w) -> (B, K, H, W).
- ``@trtp.aot_impl`` (TensorRT >= 10.9): the Triton kernel (hamedge.kernels.triton_refine) compiled
  to PTX for the builder's GPU; the engine then runs without Python (trtexec can run it).
- ``@trtp.impl``: JIT fallback that launches the same Triton kernel through torch at run time.

Everything is imported lazily: importing this module needs neither TensorRT nor Triton.
``register()`` defines the plugin once, in the process that builds or runs the engine. Do not
also load the C++ plugin library (hamedge/kernels/csrc) there: both claim hamedge::FusedRefine v1.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the definitions' type
hints with ``inspect.signature()`` and calls ``issubclass()`` on them (plugin/_validate.py,
NVIDIA/TensorRT release/10.6 to 11.1), which fails on the strings that import would make of them.

Note on the AOT path: Triton >= 3.3 appends scratch-buffer pointer parameters to every kernel;
the kernel here needs no scratch memory, so they are never read, but TensorRT passes only
(inputs, extra ints, outputs). Check ``compile_ptx(...)[3]`` (the parameter count) against 3
when changing the Triton version, and prefer the C++ plugin where in doubt.
"""

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional, Tuple

PLUGIN_ID = "hamedge::FusedRefine"
MIN_TRT = (10, 6)
MIN_TRT_AOT = (10, 9)

_REGISTERED = False


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def plugin_available() -> Tuple[bool, str]:
    """(True, "") when the Python plugin can be defined here, else (False, reason)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT is not installed"
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - a broken install is a reason, not a crash
        return False, f"TensorRT does not import ({exc})"
    if _version(trt.__version__) < MIN_TRT:
        return False, f"TensorRT {trt.__version__} < 10.6 has no tensorrt.plugin (use the C++ plugin)"
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (pip install triton)"
    return True, ""


def aot_available() -> Tuple[bool, str]:
    ok, why = plugin_available()
    if not ok:
        return ok, why
    import tensorrt as trt

    if _version(trt.__version__) < MIN_TRT_AOT:
        return False, f"TensorRT {trt.__version__} < 10.9: JIT plugin only (needs Python at run time)"
    return True, ""


def compile_ptx(h: int, w: int, H: int, W: int, gain: float, center: float, n_maps_hint: int = 480,
                in_dtype: str = "fp32", out_dtype: str = "fp32", capability: Optional[int] = None
                ) -> Tuple[str, str, dict, int, int]:
    """Compile the Triton kernel for one shape to PTX.

    Returns (kernel name, PTX, metadata {num_warps, shared}, number of kernel parameters in the
    PTX, programs per map). ``capability``: e.g. 87 (Orin), 90 (H100); default: the current GPU.
    Works without a GPU when ``capability`` is given (Triton ships its own compiler pieces).
    """
    import triton
    from triton.backends.compiler import GPUTarget

    from hamedge.kernels.triton_refine import NUM_WARPS, fused_refine_kernel, launch_config

    kind = {"fp32": "float32", "fp16": "float16"}[out_dtype]
    consts, parts = launch_config(n_maps_hint, h, w, H, W, gain, center, out_kind=kind)
    signature: dict[str, str] = {"maps_ptr": f"*{in_dtype}", "n_maps": "i32",
                                 "out_ptr": f"*{out_dtype}"}
    signature.update({k: "constexpr" for k in consts})
    src = triton.compiler.ASTSource(fn=fused_refine_kernel, signature=signature, constexprs=consts)
    target = None
    if capability is not None:
        target = GPUTarget("cuda", int(capability), 32)
    compiled = triton.compile(src, target=target, options={"num_warps": NUM_WARPS})
    ptx = compiled.asm["ptx"]
    entry = ptx[ptx.index(".entry"):]
    n_params = entry[:entry.index(")")].count(".param")
    meta = {"num_warps": compiled.metadata.num_warps, "shared": compiled.metadata.shared}
    return compiled.metadata.name, ptx, meta, n_params, parts


def register() -> None:
    """Define hamedge::FusedRefine with tensorrt.plugin (idempotent). Raises
    BackendUnavailable with the reason when TensorRT/Triton cannot."""
    global _REGISTERED
    if _REGISTERED:
        return
    ok, why = plugin_available()
    if not ok:
        from hamedge.errors import BackendUnavailable

        raise BackendUnavailable(f"FusedRefine TensorRT plugin: {why}")
    import tensorrt as trt
    import tensorrt.plugin as trtp

    define(trtp, trt, aot=aot_available()[0])
    _REGISTERED = True


def static_dim(expr, what: str) -> int:
    """A build-time constant dimension of a ``tensorrt.plugin`` ShapeExpr.

    ShapeExpr has no ``__int__``: its value is ``constant_value()`` once ``is_constant`` (a
    property) says it is one (plugin/_tensor.py, NVIDIA/TensorRT release/10.9 to 11.1)."""
    if isinstance(expr, int):
        return expr
    if getattr(expr, "is_fake", False) or not expr.is_constant:
        raise ValueError(f"FusedRefine needs a static {what}; the graph gives a dynamic one")
    return int(expr.constant_value())


def define(trtp, trt, aot: bool) -> None:
    """Define hamedge::FusedRefine with the given ``tensorrt.plugin`` module (the real one in
    ``register()``; tests pass NVIDIA's package over a stand-in tensorrt core)."""

    @trtp.register(PLUGIN_ID)
    def fused_refine_desc(cams: trtp.TensorDesc, H: int, W: int, gain: float, center: float,
                          zero_range: float) -> trtp.TensorDesc:
        out = cams.like()
        out.shape_expr[2] = H
        out.shape_expr[3] = W
        return out

    if aot:
        @trtp.aot_impl(PLUGIN_ID)
        def fused_refine_aot(cams: trtp.TensorDesc, H: int, W: int, gain: float, center: float,
                             zero_range: float, outputs: Tuple[trtp.TensorDesc], tactic: int
                             ) -> Tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs]:
            import torch

            dtype = "fp16" if cams.dtype == trt.float16 else "fp32"
            h = static_dim(cams.shape_expr[2], "map height")  # static in HAM graphs
            w = static_dim(cams.shape_expr[3], "map width")
            cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
            name, ptx, meta, _, parts = compile_ptx(
                h, w, H, W, gain, center, in_dtype=dtype, out_dtype=dtype,
                capability=None if cap is None else cap[0] * 10 + cap[1])
            n_maps = cams.shape_expr[0] * cams.shape_expr[1]
            launch = trtp.KernelLaunchParams()
            launch.grid_x = parts
            launch.grid_y = n_maps
            launch.block_x = meta["num_warps"] * 32
            launch.shared_mem = meta["shared"]
            extra = trtp.SymIntExprs(1)
            extra[0] = trtp.SymInt32(n_maps)
            return name, ptx, launch, extra

    @trtp.impl(PLUGIN_ID)
    def fused_refine_jit(cams: trtp.Tensor, H: int, W: int, gain: float, center: float,
                         zero_range: float, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from hamedge.kernels.triton_refine import triton_refine

        x = torch.as_tensor(cams, device="cuda")
        y = torch.as_tensor(outputs[0], device="cuda")
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            y.copy_(triton_refine(x, H, W, gain, center, y.dtype, zero_range))


# -- loading the plugin before a build or a deserialise ------------------------------------------
LIBRARY_ENV = "HAMEDGE_FUSED_PLUGIN_LIB"
LIBRARY_NAME = "libhamedge_fused_refine.so"


def library_path(explicit=None) -> Path:
    """The C++ plugin library: ``explicit``, else $HAMEDGE_FUSED_PLUGIN_LIB, else the CMake build
    folder beside its sources (hamedge/kernels/csrc/build)."""
    candidates = [explicit, os.environ.get(LIBRARY_ENV),
                  Path(__file__).resolve().parent / "csrc" / "build" / LIBRARY_NAME]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    from hamedge.errors import BackendUnavailable

    raise BackendUnavailable(f"the FusedRefine plugin library ({LIBRARY_NAME}) was not found; "
                             f"build it (hamedge/kernels/csrc/README.md) and set {LIBRARY_ENV}")


def load(kind: str, trt, library=None) -> str:
    """Make hamedge::FusedRefine known to TensorRT in this process: ``kind`` "python" defines the
    tensorrt.plugin version, "library" loads the C++ IPluginV3 library into the plugin registry
    (IPluginRegistry::loadLibrary, TensorRT >= 10.0). Returns what was loaded, for the record."""
    from hamedge.errors import BackendUnavailable

    if kind == "python":
        register()
        return "python"
    if kind != "library":
        raise ValueError(f"unknown plugin kind {kind!r}")
    path = library_path(library)
    registry = trt.get_plugin_registry()
    if not hasattr(registry, "load_library"):
        raise BackendUnavailable(f"TensorRT {trt.__version__} cannot load the IPluginV3 "
                                 "FusedRefine library (it needs TensorRT 10.x or later)")
    if registry.load_library(str(path)) is None:
        raise BackendUnavailable(f"TensorRT could not load {path}")
    return str(path)


def describe() -> dict[str, Any]:
    """What this machine can do with the plugin (for `hamedge export` logs and docs)."""
    ok, why = plugin_available()
    aot, aot_why = aot_available()
    return {"plugin": PLUGIN_ID, "python_plugin": ok, "reason": why, "aot": aot,
            "aot_reason": aot_why}
