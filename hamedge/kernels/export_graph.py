"""The fused refinement in standard ops, for exported graphs (ONNX Runtime, TensorRT without plugins).

The naive chain (Resize to full size, ReduceMin/ReduceMax over it, Sub, Div, Sub, Mul, Sigmoid)
makes about seven full-resolution passes. Here the extremes come from the low-resolution map
(hamedge.ops.refine explains why they are exact): two constant MatMuls evaluate the upsampled map
on the cells' outermost sample rows and columns only; the normalisation, gain and centre are applied
to the low-resolution map (upsampling preserves affine maps); then ONE Resize (linear,
align_corners) and a Sigmoid run at full resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hamedge.ops.refine import axis_candidates, axis_weights


def _candidate_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_cand, n_in) interpolation rows for the candidate output indices along one axis."""
    i0, i1, frac = axis_weights(n_in, n_out)
    cand = axis_candidates(n_in, n_out)
    mat = np.zeros((len(cand), n_in), np.float32)
    rows = np.arange(len(cand))
    np.add.at(mat, (rows, i0[cand]), 1.0 - frac[cand])
    np.add.at(mat, (rows, i1[cand]), frac[cand])
    return torch.from_numpy(mat)


def fused_refine_for_export(cams: torch.Tensor, size: tuple[int, int], gain: float = 100.0,
                            center: float = 0.4, zero_range: float = 1e-5) -> torch.Tensor:
    """Raw maps (B, K, h, w) -> refined heatmaps (B, K, H, W), traceable to ONNX (opset >= 11).

    The sizes must be static (they are in an exported HAM graph); the batch may be dynamic.
    """
    height, width = (int(size), int(size)) if isinstance(size, int) else (int(s) for s in size)
    h, w = int(cams.shape[-2]), int(cams.shape[-1])
    dtype = cams.dtype
    wy = _candidate_matrix(h, height).to(dtype=dtype, device=cams.device)
    wx = _candidate_matrix(w, width).to(dtype=dtype, device=cams.device)
    samples = torch.matmul(torch.matmul(wy, cams), wx.t())  # (B, K, ny, nx): candidates only
    lo = samples.amin(dim=(2, 3), keepdim=True)
    hi = samples.amax(dim=(2, 3), keepdim=True)
    # A constant map has exactly zero range; MatMul weights may not reproduce the constant
    # exactly, so decide "zero range" (and its minimum) on the low-resolution grid itself.
    grid_lo = cams.amin(dim=(2, 3), keepdim=True)
    flat = (cams.amax(dim=(2, 3), keepdim=True) - grid_lo) == 0
    lo = torch.where(flat, grid_lo, lo)
    span = torch.where(flat, torch.full_like(hi, zero_range), hi - lo)
    logit = (cams - lo) * (gain / span) - gain * center  # at low resolution
    if (h, w) != (height, width):
        logit = F.interpolate(logit, size=(height, width), mode="bilinear", align_corners=True)
    return torch.sigmoid(logit)
