"""Optional second route: torch-tensorrt compiles the PyTorch model to a serialized TensorRT
engine stored in the same bundle format (engines/*.plan + record, builder "torch-tensorrt").
Only where torch-tensorrt and a GPU exist; otherwise BackendUnavailable with one line."""

from __future__ import annotations

from typing import Any

from hamedge.bundle import EngineRecord
from hamedge.errors import BackendUnavailable
from hamedge.trt.naming import BatchProfile, engine_filename


def compile_to_bundle(bundle, model: Any, min_batch: int = 1, opt_batch: int = 4,
                      max_batch: int = 8, precision: str = "fp16") -> EngineRecord:
    try:
        import torch
        import torch_tensorrt  # type: ignore
    except ImportError:
        raise BackendUnavailable("torch-tensorrt is not installed") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU for torch-tensorrt")
    from hamedge.model.graph import ExportWrapper, fold_grayscale
    from hamedge.runtime.tensorrt import gpu_info

    graph = bundle.graph
    net = fold_grayscale(model) if graph.folded else model
    wrapper = ExportWrapper(net.eval().cuda(), full_res=graph.heatmaps == "refined").eval()
    profile = BatchProfile(min_batch, opt_batch, max_batch)
    shapes = profile.shapes(graph.input_channels, graph.input_size)
    inputs = [torch_tensorrt.Input(min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2],
                                   dtype=torch.float32)]
    dtypes = {torch.float16, torch.float32} if precision == "fp16" else {torch.float32}
    # convert_method_to_trt_engine gives a plain serialized TensorRT engine (no torch at run time)
    plan = torch_tensorrt.convert_method_to_trt_engine(
        wrapper, "forward", inputs=inputs, ir="dynamo", enabled_precisions=dtypes)
    gpu = gpu_info()
    trt_version = __import__("tensorrt").__version__
    record = EngineRecord(
        plan=engine_filename(gpu.name, trt_version, precision, profile, builder="torch-tensorrt"),
        gpu_name=gpu.name, compute_capability=gpu.compute_capability, trt_version=trt_version,
        precision=precision, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        onnx_file="", onnx_sha256="", builder="torch-tensorrt",
        extra={"torch_tensorrt": torch_tensorrt.__version__})
    bundle.add_engine(bytes(plan), record)
    return record
