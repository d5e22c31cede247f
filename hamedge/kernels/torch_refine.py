"""Attention refinement in plain torch ops: the differentiable form used in training and as the
torch model's forward (HAM's refined maps). Same math as hamedge.ops.refine (numpy), which is
the reference for every other implementation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def refine_maps_torch(maps: torch.Tensor, size: tuple[int, int], gain: float = 100.0,
                      center: float = 0.4, zero_range: float = 1e-5) -> torch.Tensor:
    """Raw attention maps (B, K, h, w) -> refined heatmaps (B, K, H, W) in (0, 1).

    Bilinear upsampling with align_corners=True, min-max normalisation of each upsampled map over
    the image (a zero range becomes ``zero_range``), then sigmoid(gain * (x - center)).
    """
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
    flat = maps.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    span = flat.amax(dim=2, keepdim=True) - low
    span = torch.where(span == 0, torch.full_like(span, zero_range), span)
    normalised = ((flat - low) / span).view_as(maps)
    return torch.sigmoid(gain * (normalised - center))
