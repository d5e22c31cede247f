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


def choose_providers(device: str | None, available: list[str]) -> list[str]:
    """device None/"auto": CUDA when the installed onnxruntime has it, else CPU; "cpu"; "cuda"."""
    device = (device or "auto").lower()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable("this onnxruntime has no CUDA provider "
                                     "(install onnxruntime-gpu, or use --device cpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise HamedgeError(f"unknown device {device!r} for onnxruntime (cpu, cuda or auto)")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle, precision: str = "fp32", device: str | None = None,
                 threads: int | None = None, spinning: bool = True, **_ignored) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a dependency of the slim runtime
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from None
        providers = choose_providers(device, available_providers())
        on_gpu = providers[0] != "CPUExecutionProvider"
        if precision == "fp16" and not on_gpu:
            # fp16 graphs do not exist in a bundle (TensorRT makes fp16 from fp32); on a CPU the
            # fp32 graph is both exact and faster than emulated half precision.
            raise HamedgeError("fp16 needs a GPU (tensorrt or torch backend); "
                               "use --precision fp32 or int8 on a CPU")
        target = "cpu"
        self.model_path = bundle.path_for("fp32" if precision == "fp16" else precision, target)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or cpu_count())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if not spinning:  # idle intra-op threads sleep instead of spinning on cores others need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise HamedgeError(f"onnxruntime cannot load {self.model_path}: "
                               f"{str(exc).splitlines()[0]}") from None
        graph = bundle.graph
        super().__init__(bundle.spec, graph.input_channels, precision,
                         "cuda" if on_gpu else "cpu", heatmaps_refined=graph.heatmaps == "refined")
        self.input_name = graph.input_name
        self.output_names = list(graph.output_names)
        names = {o.name for o in self.session.get_outputs()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise HamedgeError(f"{self.model_path} lacks output(s) {', '.join(missing)}")
        self.providers = self.session.get_providers()

    def _run(self, batch: np.ndarray) -> RawOutputs:
        class_probs, anomaly, maps = self.session.run(list(OUTPUT_NAMES), {self.input_name: batch})
        return RawOutputs(np.asarray(class_probs, np.float32), np.asarray(anomaly, np.float32),
                          np.asarray(maps, np.float32), self.heatmaps_refined)

    def _close(self) -> None:
        self.session = None
