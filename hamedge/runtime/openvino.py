"""OpenVINO backend: the bundle's ONNX graphs compiled by OpenVINO for Intel CPUs (and Intel GPUs
where present). openvino is imported only when this backend opens; it is an extra
(pip install 'hamedge[openvino]'), never needed by the slim runtime. No torch.

- Precision is what was asked for. OpenVINO's CPU plugin otherwise runs float layers in bf16 on
  CPUs with AMX (its default INFERENCE_PRECISION_HINT), so every compile states the hint: f32
  for fp32 and for the float parts of INT8 graphs; bf16 only as the precision of its own, where
  the CPU has AMX or AVX-512 BF16.
- INT8 runs whichever of the bundle's two Q/DQ graphs (the symmetric S8S8 TensorRT form, the
  U8S8 CPU form) is faster here, measured once and remembered (hamedge.runtime.measure).
- Compiled models are cached under hamedge.cache's root (OpenVINO's CACHE_DIR): a second open of
  the same graph imports the compiled blob instead of compiling again.
- ``use="latency"`` (batch-1 calls, the API) or ``"throughput"`` (folder runs, serving) sets
  PERFORMANCE_HINT; with throughput, a batch is split across the compiled model's parallel infer
  requests (an AsyncInferQueue) and ``submit`` keeps requests in flight while the caller decodes
  the next batch or writes the last one.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np

from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.runtime.base import OUTPUT_NAMES, Backend, RawOutputs

USES = ("latency", "throughput")
# hamedge precision -> OpenVINO's INFERENCE_PRECISION_HINT (int8 graphs: the float layers' type)
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
FP16_FLAGS = ("amx_fp16", "avx512_fp16")


def ov_device(device: str | None, available: list[str]) -> str:
    """hamedge's device name -> OpenVINO's: None/"auto"/"cpu" -> CPU; "gpu" -> GPU (the first
    Intel GPU), "gpu.1" -> GPU.1."""
    device = (device or "auto").lower()
    if device in ("auto", "cpu"):
        return "CPU"
    if device.startswith("gpu"):
        name = device.upper()
        if not any(d == name or d.startswith(name + ".") for d in available):
            raise BackendUnavailable(f"OpenVINO sees no {name} device here (it has "
                                     f"{', '.join(available) or 'none'}); use --device cpu")
        return name
    raise HamedgeError(f"unknown device {device!r} for openvino (cpu, gpu or auto)")


def precision_refusal(precision: str, ov_dev: str, flags: frozenset[str],
                      capabilities: list[str]) -> str | None:
    """Why ``precision`` cannot run on this device, or None. Reduced float precisions run only
    where the hardware has them: OpenVINO would otherwise emulate or silently fall back."""
    if ov_dev != "CPU":
        return "bf16 runs on CPUs with AMX or AVX-512 BF16, not on GPUs here" \
            if precision == "bf16" else None
    if precision == "bf16" and not (set(BF16_FLAGS) & flags and "BF16" in capabilities):
        return ("bf16 needs a CPU with AMX or AVX-512 BF16 (this CPU has neither "
                f"{' nor '.join(BF16_FLAGS)}); use fp32 or int8")
    if precision == "fp16" and not (set(FP16_FLAGS) & flags and "FP16" in capabilities):
        return ("fp16 on a CPU needs AMX-FP16 or AVX512-FP16 (this CPU has neither); use fp32, "
                "bf16 or int8, or an Intel GPU (--device gpu)")
    return None


def compile_config(precision: str, use: str, threads: int | None, cache_dir: str | None) -> dict:
    """The compile properties (OpenVINO's property names and string values)."""
    if use not in USES:
        raise HamedgeError(f"unknown use {use!r} for openvino ({' or '.join(USES)})")
    config = {"PERFORMANCE_HINT": use.upper(),
              "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision]}
    if precision in ("fp32", "int8"):
        # ACCURACY also keeps OpenVINO from lowering precision on its own for speed.
        config["EXECUTION_MODE_HINT"] = "ACCURACY"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("openvino is not installed (pip install 'hamedge[openvino]'); "
                                 "use --backend onnxruntime") from None
    return openvino


class OpenVINOBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")
    devices = ("cpu", "gpu")
    requires = ("openvino",)
    install_hint = "pip install 'hamedge[openvino]'; or use --backend onnxruntime"

    def __init__(self, bundle, precision: str = "fp32", device: str | None = None,
                 threads: int | None = None, use: str = "latency", cache: bool = True) -> None:
        self.check_precision(precision)
        if use not in USES:
            raise HamedgeError(f"unknown use {use!r} for openvino ({' or '.join(USES)})")
        if precision == "bf16" and bundle.guard_refusal(self.name, "bf16"):
            raise HamedgeError(bundle.guard_refusal(self.name, "bf16"))
        if precision == "int8":
            path, self.int8_choice = self._fastest_int8(bundle, device, threads, use, cache)
        else:
            path = bundle.path_for(precision, "cpu")
        self._open(path, bundle.spec, bundle.graph, precision, device, threads, use, cache)

    @classmethod
    def from_graph(cls, path, spec, graph, precision: str = "fp32", device: str | None = "cpu",
                   threads: int | None = None, use: str = "latency",
                   cache: bool = False) -> "OpenVINOBackend":
        """Run one ONNX graph file that is not (yet) in a bundle (the export guard's graphs)."""
        cls.check_precision(precision)
        self = cls.__new__(cls)
        self._open(Path(path), spec, graph, precision, device, threads, use, cache)
        return self

    def _open(self, path: Path, spec, graph, precision: str, device: str | None,
              threads: int | None, use: str, cache: bool) -> None:
        from hamedge.runtime.measure import cpu_flags

        ov = _import_openvino()
        core = ov.Core()
        target = ov_device(device, list(core.available_devices))
        capabilities = list(core.get_property(target, "OPTIMIZATION_CAPABILITIES"))
        refusal = precision_refusal(precision, target, cpu_flags(), capabilities)
        if refusal:
            raise HamedgeError(refusal)
        cache_dir = None
        if cache:
            from hamedge.cache import cache_root

            cache_dir = cache_root() / "openvino"
            cache_dir.mkdir(parents=True, exist_ok=True)
        config = compile_config(precision, use, threads, None if cache_dir is None else str(cache_dir))
        try:
            # A path (not a read model) lets a cached compile skip reading the ONNX file too.
            self.compiled = core.compile_model(str(path), target, config)
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line text
            raise HamedgeError(f"openvino cannot compile {Path(path).name} for {target}: "
                               f"{(str(exc).strip().splitlines() or ['?'])[0]}") from None
        names = {name for out in self.compiled.outputs for name in out.get_names()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise HamedgeError(f"{path} lacks output(s) {', '.join(missing)}")
        super().__init__(spec, graph.input_channels, precision, target.lower(),
                         heatmaps_refined=graph.heatmaps == "refined", artifact=path)
        self.use, self.config, self.model_path = use, config, Path(path)
        self.input_name = graph.input_name
        self._request = self.compiled.create_infer_request()
        self._queue = None
        self._in_flight: set[Future] = set()
        self._ov = ov

    # -- INT8: the faster of the bundle's two Q/DQ graphs ------------------------------------------
    @classmethod
    def _fastest_int8(cls, bundle, device, threads, use, cache) -> tuple[Path, object | None]:
        from hamedge.runtime.measure import fastest_int8

        key = {"openvino": _import_openvino().__version__, "device": (device or "cpu").lower(),
               "threads": threads, "use": use}
        return fastest_int8(bundle, cls.name, key, lambda path: cls.from_graph(
            path, bundle.spec, bundle.graph, "int8", device, threads, use, cache))

    # -- running -----------------------------------------------------------------------------------
    def _outputs(self, request) -> RawOutputs:
        out = [np.array(request.get_tensor(name).data, dtype=np.float32) for name in OUTPUT_NAMES]
        return RawOutputs(*out, self.heatmaps_refined)

    @property
    def parallel_requests(self) -> int:
        # the THROUGHPUT hint's streams each take one request; LATENCY runs one at a time
        return len(self._infer_queue()) if self.use == "throughput" else 1

    def _infer_queue(self):
        if self._queue is None:
            jobs = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._queue = self._ov.AsyncInferQueue(self.compiled, max(1, jobs))
            self._queue.set_callback(self._done)
        return self._queue

    def _done(self, request, future: Future) -> None:
        """OpenVINO's callback (its own thread): copy the outputs out of the request, which the
        queue reuses as soon as this returns."""
        try:
            future.set_result(self._outputs(request))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(exc)
        finally:
            self._in_flight.discard(future)

    def _start(self, batch: np.ndarray) -> Future:
        future: Future = Future()
        self._in_flight.add(future)
        self._infer_queue().start_async({self.input_name: batch}, future)
        return future

    def _run(self, batch: np.ndarray) -> RawOutputs:
        n = batch.shape[0]
        if self.use == "latency" or n == 1:
            self._request.infer({self.input_name: batch})
            return self._outputs(self._request)
        # throughput: one chunk per parallel request, so every stream of the CPU plugin works
        chunks = np.array_split(batch, min(n, len(self._infer_queue())))
        parts = [f.result() for f in [self._start(np.ascontiguousarray(c)) for c in chunks]]
        return RawOutputs(*(np.concatenate([getattr(p, k) for p in parts]) for k in OUTPUT_NAMES),
                          self.heatmaps_refined)

    def submit(self, batch: np.ndarray) -> Future:
        """Start ``batch`` on a free infer request and return a Future of its RawOutputs at once:
        the caller decodes or writes meanwhile. Futures complete in OpenVINO's callback thread."""
        return self._start(self._checked(batch))

    def _close(self) -> None:
        # wait for what is in flight through its futures (AsyncInferQueue.wait_all was seen to
        # hang at close in a process that had other OpenVINO and ONNX Runtime sessions open)
        for future in list(self._in_flight):
            future.exception()
        self._queue = self._request = self.compiled = None
