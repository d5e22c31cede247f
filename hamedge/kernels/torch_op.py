"""``torch.ops.hamedge.fused_refine``: the fused refinement as a torch custom op.

- CPU: the numpy fused path (hamedge.ops.refine.refine, tested against the reference).
- CUDA: the Triton kernel (hamedge.kernels.triton_refine), imported on first use.
- Fake (meta) implementation for tracing / torch.compile / export.

Inference only: no autograd formula is registered (training uses the differentiable torch chain
in hamedge.kernels.torch_refine); calling it on a tensor that requires grad gives an output without
a gradient history.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.uint8: np.uint8}


@torch.library.custom_op("hamedge::fused_refine", mutates_args=(), device_types="cpu")
def fused_refine(maps: torch.Tensor, H: int, W: int, gain: float, center: float,
                 out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Raw maps (B, K, h, w) or (K, h, w) -> refined heatmaps (..., H, W) in ``out_dtype``
    (float32 default, float16, or uint8 = round(255 * value))."""
    from hamedge.ops.refine import refine

    dtype = _check(maps, out_dtype)
    arr = maps.detach().to(torch.float32).numpy()
    return torch.from_numpy(refine(arr, (H, W), gain=gain, center=center, out_dtype=_NP[dtype]))


@fused_refine.register_kernel("cuda")
def _fused_refine_cuda(maps: torch.Tensor, H: int, W: int, gain: float, center: float,
                       out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    from hamedge.kernels.triton_refine import triton_refine

    dtype = _check(maps, out_dtype)
    return triton_refine(maps, H, W, gain, center, dtype)


@fused_refine.register_fake
def _fused_refine_fake(maps: torch.Tensor, H: int, W: int, gain: float, center: float,
                       out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    dtype = _check(maps, out_dtype)
    return maps.new_empty((*maps.shape[:-2], H, W), dtype=dtype)


def _check(maps: torch.Tensor, out_dtype: Optional[torch.dtype]) -> torch.dtype:
    dtype = torch.float32 if out_dtype is None else out_dtype
    if dtype not in _NP:
        raise ValueError(f"out_dtype must be float32, float16 or uint8, not {dtype}")
    if maps.dim() not in (3, 4):
        raise ValueError(f"maps must be (B, K, h, w) or (K, h, w), got {tuple(maps.shape)}")
    return dtype


def refine_torch(cams: torch.Tensor, size: tuple[int, int], gain: float = 100.0,
                 center: float = 0.4, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """What a torch inference backend calls: the custom op on CPU or CUDA (no autograd)."""
    height, width = (size, size) if isinstance(size, int) else size
    return torch.ops.hamedge.fused_refine(cams, int(height), int(width), float(gain),
                                          float(center), out_dtype)
