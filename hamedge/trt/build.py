"""Building TensorRT plans from a bundle's ONNX graphs: the thin part that needs TensorRT + a GPU.

Works on the TensorRT 8.5 / 10.x / 11.x Python APIs by feature detection (NvInfer.h of
NVIDIA/TensorRT release/8.5, release/10.3, release/10.13, release/11.0):
- precision builder flags (FP16, INT8) exist up to 10.x; 11.0 removed them: every network is
  strongly typed, the graph's own types (and Q/DQ nodes) decide precision, so an 11.x INT8 engine
  keeps its float parts in fp32 (10.x with the FP16 flag: fp16);
- NetworkDefinitionCreationFlag: 8.5 EXPLICIT_BATCH = 0 (needed); 10.x EXPLICIT_BATCH = 0
  (deprecated, ignored), STRONGLY_TYPED = 1, from 10.9 PREFER_JIT/AOT_PYTHON_PLUGINS = 2/3;
  11.0 STRONGLY_TYPED = 0 (deprecated, ignored), PREFER_JIT/AOT_PYTHON_PLUGINS = 1/2. Flags are
  always taken by name from the module, never as numbers;
- workspace: ``set_memory_pool_limit`` (8.4+) else ``max_workspace_size``;
- DLA: FP16 or INT8 only, and one fixed batch (min = opt = max) in the profile.
INT8 is always explicit quantisation: the bundle's symmetric Q/DQ graph (model.int8.onnx), never
a calibrator. ``fused_plugin`` builds from model.plugin.onnx with hamedge::FusedRefine loaded. ``build_engine(bundle, ..., trt=fake)`` accepts a stand-in module so the logic around
the builder is tested on machines without TensorRT.
"""

from __future__ import annotations

import time
from typing import Any

from hamedge.bundle import PLUGIN_GRAPH, EngineRecord
from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.fsutil import write_bytes
from hamedge.trt.engines import (DLA_PRECISIONS, BatchProfile, engine_filename, gpu_info,
                                 timing_cache_path, version_tuple)

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
PLUGIN_KINDS = ("python", "library")


def features(trt: Any) -> dict[str, bool]:
    """What this TensorRT Python API offers."""
    flags = getattr(trt, "BuilderFlag", None)
    net = getattr(trt, "NetworkDefinitionCreationFlag", None)
    return {
        "fp16_flag": flags is not None and hasattr(flags, "FP16"),
        "int8_flag": flags is not None and hasattr(flags, "INT8"),
        "explicit_batch_flag": net is not None and hasattr(net, "EXPLICIT_BATCH"),
        "strongly_typed_flag": net is not None and hasattr(net, "STRONGLY_TYPED"),
        "memory_pool": hasattr(trt, "MemoryPoolType"),
        "gpu_fallback_flag": flags is not None and hasattr(flags, "GPU_FALLBACK"),
        "prefer_aot_flag": net is not None and hasattr(net, "PREFER_AOT_PYTHON_PLUGINS"),
    }


def network_flags(trt: Any, feats: dict[str, bool], python_plugin: bool = False) -> int:
    """Bits for create_network. 8.x needs EXPLICIT_BATCH. Without precision flags (11.x) the
    network is strongly typed by itself and STRONGLY_TYPED is deprecated and ignored there; a
    10.x without them (none is known) is asked for it. An engine with the Python plugin, which
    defines both an AOT and a JIT implementation, must say which one it wants (tensorrt.plugin
    refuses to choose): the AOT one, so the engine runs without Python."""
    net = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flags = 0
    if feats["explicit_batch_flag"] and version_tuple(trt.__version__)[0] < 10:
        flags |= 1 << int(net.EXPLICIT_BATCH)
    if not feats["fp16_flag"] and feats["strongly_typed_flag"] and version_tuple(trt.__version__)[0] < 11:
        flags |= 1 << int(net.STRONGLY_TYPED)
    if python_plugin and feats["prefer_aot_flag"]:
        flags |= 1 << int(net.PREFER_AOT_PYTHON_PLUGINS)
    return flags


def graph_for(bundle, precision: str, feats: dict[str, bool],
              fused_plugin: bool = False) -> tuple[str, bytes]:
    """(bundle-relative ONNX file, its bytes) to build ``precision`` from."""
    if precision not in ENGINE_PRECISIONS:
        raise HamedgeError(f"unknown engine precision {precision!r}; one of "
                           f"{', '.join(ENGINE_PRECISIONS)}")
    if fused_plugin:
        if precision == "int8":
            raise HamedgeError("the fused-plugin graph is a float graph: build fp32 or fp16 "
                               "engines from it, int8 from model.int8.onnx")
        path = bundle.plugin_graph_path
        if path is None:
            raise HamedgeError(f"bundle {bundle.root} has no {PLUGIN_GRAPH} (export with "
                               "--fused-plugin)")
    else:
        path = bundle.path_for(precision, "tensorrt")
    data = path.read_bytes()
    if precision == "fp16" and not feats["fp16_flag"]:
        data = _fp16_graph(data)  # strongly typed: fp16 must be in the graph itself
    return path.relative_to(bundle.root).as_posix(), data


def _fp16_graph(data: bytes) -> bytes:
    try:
        import onnx
        from onnxconverter_common import float16  # type: ignore
    except ImportError:
        raise BackendUnavailable("this TensorRT has no FP16 builder flag (strongly typed "
                                 "networks); building fp16 needs onnxconverter-common to write "
                                 "an fp16 graph (pip install onnxconverter-common)") from None
    model = float16.convert_float_to_float16(onnx.load_from_string(data), keep_io_types=True)
    return model.SerializeToString()


def configure(trt: Any, builder: Any, config: Any, feats: dict[str, bool], precision: str,
              workspace_mib: int, dla_core: int | None) -> list[str]:
    """Set precision flags, workspace and DLA on ``config``; returns what was set (for the record)."""
    if dla_core is not None and precision not in DLA_PRECISIONS:
        raise HamedgeError(f"DLA runs fp16 or int8 only, not {precision}")
    done = []
    if feats["memory_pool"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    else:
        config.max_workspace_size = workspace_mib << 20
    done.append(f"workspace={workspace_mib}MiB")
    if precision in ("fp16", "int8") and feats["fp16_flag"]:
        config.set_flag(trt.BuilderFlag.FP16)  # up to 10.x int8 graphs: float parts in fp16 too
        done.append("FP16")
    if precision == "int8" and feats["int8_flag"]:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ; no calibrator
        done.append("INT8")
    if dla_core is not None:
        if not 0 <= dla_core < getattr(builder, "num_DLA_cores", 0):
            raise BackendUnavailable(f"DLA core {dla_core} requested, this device has "
                                     f"{getattr(builder, 'num_DLA_cores', 0)}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        if feats["gpu_fallback_flag"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        done.append(f"DLA{dla_core}+GPU fallback")
    return done


def _float_precision(precision: str, feats: dict[str, bool]) -> str:
    """The type of the engine's floating-point layers: what the FP16 flag (up to 10.x) or the
    graph's own types (11.x, strongly typed) give."""
    if precision == "fp32":
        return "fp32"
    if precision == "fp16":
        return "fp16"  # 11.x: the graph itself is converted to fp16 (graph_for)
    return "fp16" if feats["fp16_flag"] else "fp32"  # int8: Q/DQ regions int8, the rest float


def _load_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed; engines not built") from None
    return trt


def build_engine(bundle, precision: str = "fp16", min_batch: int = 1, opt_batch: int | None = None,
                 max_batch: int = 8, workspace_mib: int = 2048, dla_core: int | None = None,
                 timing_cache: bool = True, fused_plugin: str | None = None,
                 plugin_library: Any = None, trt: Any = None, gpu: Any = None) -> EngineRecord:
    """Build one plan from the bundle's graph, store it (and its record) in the bundle.

    ``dla_core``: build for that DLA core (fp16/int8; one fixed batch, ``max_batch`` unless
    min = opt = max was given). ``fused_plugin``: "python" or "library": build from
    model.plugin.onnx with that form of hamedge::FusedRefine loaded (``plugin_library``: the C++
    library's path). Raises BackendUnavailable (one line) without TensorRT or a GPU.
    ``trt``/``gpu`` stand in for the tensorrt module and the GPU description in tests."""
    trt = trt or _load_trt()
    gpu = gpu or gpu_info()
    if gpu is None:
        raise BackendUnavailable("no CUDA GPU found; engines not built")
    if fused_plugin is not None and fused_plugin not in PLUGIN_KINDS:
        raise HamedgeError(f"unknown fused plugin {fused_plugin!r}; one of {', '.join(PLUGIN_KINDS)}")
    opt = opt_batch if opt_batch is not None else max(min_batch, min(4, max_batch))
    profile = BatchProfile(min_batch, opt, max_batch)
    if dla_core is not None and not profile.min == profile.opt == profile.max:
        profile = BatchProfile.for_dla(max_batch)
    feats = features(trt)
    onnx_file, onnx_bytes = graph_for(bundle, precision, feats, fused_plugin=fused_plugin is not None)

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no usable CUDA device ("CUDA initialization failure")
        raise BackendUnavailable(f"TensorRT cannot start a builder here: "
                                 f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    plugin_loaded = None
    if fused_plugin is not None:  # the parser maps the FusedRefine node to a registered creator
        from hamedge.kernels import trt_plugin

        plugin_loaded = trt_plugin.load(fused_plugin, trt, plugin_library)
        if fused_plugin == "python":  # AOT: the plan carries the kernel, no Python at run time
            plugin_loaded = "python (aot)" if trt_plugin.aot_available()[0] else "python (jit)"
    network = builder.create_network(network_flags(trt, feats, python_plugin=fused_plugin == "python"))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise HamedgeError(f"TensorRT could not parse {onnx_file}: "
                           f"{errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    settings = configure(trt, builder, config, feats, precision, workspace_mib, dla_core)
    if dla_core is not None:
        settings.append(f"batch={profile.max} (DLA: fixed)")
    graph = bundle.graph
    profile_obj = builder.create_optimization_profile()
    profile_obj.set_shape(graph.input_name, *profile.shapes(graph.input_channels, graph.input_size))
    config.add_optimization_profile(profile_obj)

    cache_file = timing_cache_path(gpu.name, trt.__version__) if timing_cache else None
    cache = None
    if cache_file is not None and hasattr(config, "create_timing_cache"):
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, False)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise HamedgeError(f"TensorRT failed to build a {precision} engine from {onnx_file} "
                           "(see the TensorRT log above)")
    if cache is not None:
        write_bytes(cache_file, bytes(cache.serialize()))

    record = EngineRecord(
        plan=engine_filename(gpu.name, trt.__version__, precision, profile, dla_core,
                             plugin=fused_plugin is not None),
        gpu_name=gpu.name, compute_capability=gpu.compute_capability,
        trt_version=str(trt.__version__), precision=precision, min_batch=profile.min,
        opt_batch=profile.opt, max_batch=profile.max, onnx_file=onnx_file,
        onnx_sha256=bundle.files[onnx_file], dla_core=dla_core,
        extra={"settings": settings, "build_seconds": round(seconds, 2),
               "strongly_typed": not feats["fp16_flag"],
               "float_precision": _float_precision(precision, feats),
               "fused_plugin": fused_plugin, "plugin_loaded": plugin_loaded,
               "timing_cache": str(cache_file) if cache is not None else None})
    bundle.add_engine(bytes(plan), record)
    return record
