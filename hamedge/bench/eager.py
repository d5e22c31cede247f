"""The PyTorch eager baseline: the same checkpoint run the way the reference code runs it.

Reference test-time path (HAM.md): PIL opens the file, converts it to RGB, resizes it to S x S with
PIL's bilinear filter, scales to [0, 1] and normalises with the spec's mean/std; then the model's
full forward, refined maps at full resolution included. This is written here only to *time* that
path as the baseline; hamedge's own preprocessing is hamedge.preprocess, used everywhere else.
torch is imported lazily (the bench module itself imports without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hamedge.errors import BackendUnavailable

NAME = "torch-eager"


def reference_preprocess(path: str | Path, spec) -> np.ndarray:
    """One file -> (C, S, S) float32, as the reference's test transform does it."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB" if spec.in_channels == 3 else "L")
        img = img.resize((spec.input_size, spec.input_size), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0
    if x.ndim == 2:
        x = x[:, :, None]
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class EagerBaseline:
    """model(x) with refine=True, fp32, on CUDA when present else the CPU, as the reference
    evaluates."""

    def __init__(self, weights: str | Path, spec=None, device: str | None = None,
                 threads: int | None = None) -> None:
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the PyTorch eager baseline needs torch (pip install "
                                     "'hamedge[bench]')") from None
        from hamedge.model.checkpoint import load_model

        self.torch = torch
        if device is None:  # the reference runs on the GPU when there is one
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(int(threads))
        self.device = device
        self.model = load_model(weights, device=device, expect=spec)
        self.spec = self.model.spec
        self.weights = Path(weights)

    @property
    def size_bytes(self) -> int:
        return self.weights.stat().st_size

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def forward(self, x: Any):
        """The reference forward: refined maps at full resolution included."""
        with self.torch.no_grad():
            return self.model(x, refine=True)

    def to_tensor(self, batch: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)

    def model_only_fn(self, batch: np.ndarray):
        """A call that runs the forward alone on an already-preprocessed batch."""
        x = self.to_tensor(batch)

        def run() -> None:
            self.forward(x)
            self._sync()

        return run

    def end_to_end(self, files: list[Path], stages=None) -> dict[str, np.ndarray]:
        """Files -> reference preprocessing -> forward -> probabilities and refined heatmaps.
        ``stages``: a hamedge.bench.runner.Stages collecting time per stage."""
        if stages is not None:
            stages.start()
        x = self.to_tensor(np.stack([reference_preprocess(f, self.spec) for f in files]))
        if stages is not None:
            stages.mark("read+preprocess")
        out = self.forward(x)
        self._sync()
        if stages is not None:
            stages.mark("forward+refine")
        torch = self.torch
        heatmaps = torch.cat((out.anomaly_map, out.class_maps), dim=1)
        result = {"class_probs": torch.sigmoid(out.class_logits).cpu().numpy(),
                  "anomaly_prob": torch.sigmoid(out.anomaly_logit).cpu().numpy(),
                  "heatmaps": heatmaps.cpu().numpy()}
        if stages is not None:
            stages.mark("to numpy")
        return result

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """hamedge.evaluation's predict_fn: preprocessed batch -> probs, anomaly, refined maps."""
        torch = self.torch
        out = self.forward(self.to_tensor(batch))
        maps = torch.cat((out.anomaly_map, out.class_maps), dim=1)
        return (torch.sigmoid(out.class_logits).cpu().numpy(),
                torch.sigmoid(out.anomaly_logit).cpu().numpy(), maps.cpu().numpy())
