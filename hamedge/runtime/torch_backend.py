"""Torch backend: the reference (the HAM network itself, from the bundle's weights), and the GPU
path where TensorRT is absent. torch is imported only when this backend opens."""

from __future__ import annotations

import time

import numpy as np

from hamedge.errors import BackendUnavailable, BundleError, HamedgeError
from hamedge.runtime.base import Backend, RawOutputs


class TorchBackend(Backend):
    name = "torch"
    precisions = ("fp32", "fp16")
    devices = ("cpu", "cuda")
    requires = ("torch", "safetensors")
    install_hint = "pip install 'hamedge[train]'; or use --backend onnxruntime"

    def __init__(self, bundle, precision: str = "fp32", device: str | None = None,
                 refine_on_device: bool = False, threads: int | None = None) -> None:
        self.check_precision(precision)
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the torch backend needs PyTorch (pip install 'hamedge[train]'); "
                                     "use --backend onnxruntime") from None
        from hamedge.model.checkpoint import load_model

        weights = bundle.weights_path
        if weights is None:
            raise BundleError(f"bundle {bundle.root} has no weights.safetensors for the torch backend")
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA GPU (use --device cpu)")
        if precision == "fp16" and not device.startswith("cuda"):
            raise HamedgeError("fp16 on the torch backend needs a CUDA GPU")
        if threads and not device.startswith("cuda"):
            torch.set_num_threads(int(threads))
        self._torch = torch
        self.model = load_model(weights, device=device, expect=bundle.spec)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":
            self.model = self.model.half()
        self.refine_on_device = refine_on_device
        super().__init__(self.model.spec, self.model.spec.in_channels, precision, device,
                         heatmaps_refined=refine_on_device, artifact=weights)

    def _run(self, batch: np.ndarray) -> RawOutputs:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, self.dtype, non_blocking=True)
            on_gpu = not self.on_cpu
            if on_gpu:  # the device's time: the forward alone, without the copies around it
                torch.cuda.synchronize()
                start = time.perf_counter()
            out = self.model(x, refine=False)
            cams = torch.cat((out.anomaly_cam, out.class_cams), dim=1).float()
            if self.refine_on_device:
                cams = self._refine(cams, x.shape[-1])
            if on_gpu:
                torch.cuda.synchronize()
                self._inference_time = time.perf_counter() - start
            return RawOutputs(torch.sigmoid(out.class_logits.float()).cpu().numpy(),
                              torch.sigmoid(out.anomaly_logit.float()).cpu().numpy(),
                              cams.cpu().numpy(), self.refine_on_device)

    def _refine(self, cams, size: int):
        """Refined heatmaps on the device: the fused custom op when present, else plain torch ops."""
        spec = self.spec
        try:
            from hamedge.kernels.torch_op import refine_torch  # the fused custom op (CPU and CUDA)
        except ImportError:
            from hamedge.kernels.torch_refine import refine_maps_torch as refine_torch
        return refine_torch(cams, (size, size), spec.cam_gain, spec.cam_center)

    def _close(self) -> None:
        self.model = None
