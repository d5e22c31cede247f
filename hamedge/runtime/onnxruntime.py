"""ONNX Runtime backend: the default, CPU everywhere, CUDA / TensorRT execution providers where the
installed onnxruntime has them. No torch."""

from __future__ import annotations

import os

import numpy as np

from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.runtime.base import OUTPUT_NAMES, Backend, RawOutputs


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(device: str | None, available: list[str]) -> list:
    """device None/"auto": CUDA when the installed onnxruntime has it, else CPU; "cpu"; "cuda";
    "cuda:N" (the CUDA provider on GPU N, as ONNX Runtime's (name, options) pair)."""
    device = (device or "auto").lower()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = device[len("cuda"):]
        if index and not (index.startswith(":") and index[1:].isdigit()):
            raise HamedgeError(f"unknown device {device!r} for onnxruntime (cuda or cuda:N)")
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable("this onnxruntime has no CUDA provider "
                                     "(install onnxruntime-gpu, or use --device cpu)")
        if index:
            return [("CUDAExecutionProvider", {"device_id": int(index[1:])}),
                    "CPUExecutionProvider"]
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise HamedgeError(f"unknown device {device!r} for onnxruntime (cpu, cuda or auto)")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def graph_target(providers: list[str]) -> str:
    """Which of the bundle's graphs suits the first provider, where nothing is measured: on the
    CUDA provider the symmetric S8S8 form (the TensorRT one) is the one its QDQ kernels fuse.
    On the CPU provider INT8 is measured (OnnxRuntimeBackend._fastest_int8)."""
    return "cpu" if providers[0] == "CPUExecutionProvider" else "tensorrt"


def _guarded_int8(bundle, path: Path) -> Path:
    """``path``, or the bundle's other INT8 graph when the export guard rejected ``path`` for
    ONNX Runtime and passed the other; refused with the guard's reason when it rejected both."""
    from hamedge.bundle import INT8_GRAPHS

    refusal = bundle.guard_refusal("onnxruntime", "int8", path.name)
    if refusal is None:
        return path
    for rel in INT8_GRAPHS.values():
        if rel != path.name and bundle.has(rel) and not bundle.guard_refusal("onnxruntime", "int8", rel):
            return bundle.root / rel
    raise HamedgeError(refusal)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    # A bundle has no fp16 graph (TensorRT lowers fp32 itself) and running fp32 under an fp16
    # label would not be what was asked for: fp16 is the tensorrt and torch backends'.
    precisions = ("fp32", "int8")
    devices = ("cpu", "cuda")
    requires = ("onnxruntime",)
    install_hint = "pip install onnxruntime (onnxruntime-gpu for CUDA)"

    def __init__(self, bundle, precision: str = "fp32", device: str | None = None,
                 threads: int | None = None, use: str = "latency") -> None:
        self.check_precision(precision)
        providers = choose_providers(device, available_providers())
        if precision == "int8" and providers == ["CPUExecutionProvider"]:
            # the U8S8 form is usually ONNX Runtime's fast path on x86, but not on every CPU
            # (ARM, x86 without VNNI): measured once per machine and remembered
            path, self.int8_choice = self._fastest_int8(bundle, threads)
        else:
            path = bundle.path_for(precision, graph_target(providers))
            if precision == "int8":
                path = _guarded_int8(bundle, path)
        # "throughput" (folder runs): idle intra-op threads sleep instead of spinning on the cores
        # the pipeline's readers and heatmap writers need (benchmarks/infer_bound.py)
        self._open(path, bundle.spec, bundle.graph, precision, providers, threads,
                   spinning=use != "throughput")

    @classmethod
    def _fastest_int8(cls, bundle, threads: int | None):
        import onnxruntime as ort

        from hamedge.runtime.measure import fastest_int8

        key = {"onnxruntime": ort.__version__, "device": "cpu", "threads": threads}
        return fastest_int8(bundle, cls.name, key, lambda path: cls.from_graph(
            path, bundle.spec, bundle.graph, "int8", "cpu", threads))

    @classmethod
    def from_graph(cls, path, spec, graph, precision: str = "fp32", device: str | None = "cpu",
                   threads: int | None = None) -> "OnnxRuntimeBackend":
        """Run one ONNX graph file that is not (yet) in a bundle, e.g. the INT8 graphs the export
        guard measures before the bundle is committed. ``graph`` is the bundle's GraphInfo."""
        self = cls.__new__(cls)
        self._open(path, spec, graph, precision, choose_providers(device, available_providers()),
                   threads)
        return self

    def _open(self, path, spec, graph, precision: str, providers: list[str],
              threads: int | None, spinning: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a dependency of the slim runtime
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or cpu_count())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.model_path = path
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise HamedgeError(f"onnxruntime cannot load {path}: "
                               f"{str(exc).splitlines()[0]}") from None
        on_gpu = providers[0] != "CPUExecutionProvider"
        super().__init__(spec, graph.input_channels, precision, "cuda" if on_gpu else "cpu",
                         heatmaps_refined=graph.heatmaps == "refined", artifact=path)
        self.input_name = graph.input_name
        names = {o.name for o in self.session.get_outputs()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise HamedgeError(f"{path} lacks output(s) {', '.join(missing)}")
        self.providers = self.session.get_providers()

    def _run(self, batch: np.ndarray) -> RawOutputs:
        class_probs, anomaly, maps = self.session.run(list(OUTPUT_NAMES), {self.input_name: batch})
        return RawOutputs(np.asarray(class_probs, np.float32), np.asarray(anomaly, np.float32),
                          np.asarray(maps, np.float32), self.heatmaps_refined)

    def _close(self) -> None:
        self.session = None
