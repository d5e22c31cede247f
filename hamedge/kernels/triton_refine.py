"""The fused refinement as one Triton kernel (GPU), the same math as hamedge.ops.refine.

One launch, grid (programs per map, maps). Every program first finds its map's exact upsampled
extremes by evaluating the bilinear map on the cells' first/last sample rows and columns
((2h-1) x (2w-1) points, from the low-resolution map, which stays in L1/L2), then writes its share
of output rows: bilinear sample, normalise, sigmoid, store in the output dtype. Nothing but the
output is written at full resolution. Programs of one map repeat the small extremes pass; the
launcher keeps programs per map low enough that this stays a fraction of the output work.

Shapes, gain and centre are compile-time constants (they are fixed per exported model), so the
only runtime argument besides the pointers is the number of maps: this is what the TensorRT AOT
plugin (hamedge.kernels.trt_plugin) needs, since its extra kernel arguments can only be integers.
Kernel argument order is (inputs, integer extras, outputs), TensorRT's AOT convention.

Tests run it on the CPU with TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math

import numpy as np
import triton
import triton.language as tl

OUT_KINDS = {"float32": 0, "float16": 1, "uint8": 2}
BLOCK_H = 8
BLOCK_W = 128
CAND_BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _sample(base, iy, ix, H_IN: tl.constexpr, W_IN: tl.constexpr, SCALE_Y: tl.constexpr,
            SCALE_X: tl.constexpr, mask):
    """Bilinear (align_corners) value of the low-res map at output indices iy, ix (broadcast)."""
    sy = iy.to(tl.float32) * SCALE_Y
    sx = ix.to(tl.float32) * SCALE_X
    y0 = tl.minimum(tl.floor(sy).to(tl.int32), H_IN - 1)
    x0 = tl.minimum(tl.floor(sx).to(tl.int32), W_IN - 1)
    y1 = tl.minimum(y0 + 1, H_IN - 1)
    x1 = tl.minimum(x0 + 1, W_IN - 1)
    fy = sy - y0.to(tl.float32)
    fx = sx - x0.to(tl.float32)
    v00 = tl.load(base + y0 * W_IN + x0, mask=mask, other=0.0).to(tl.float32)
    v01 = tl.load(base + y0 * W_IN + x1, mask=mask, other=0.0).to(tl.float32)
    v10 = tl.load(base + y1 * W_IN + x0, mask=mask, other=0.0).to(tl.float32)
    v11 = tl.load(base + y1 * W_IN + x1, mask=mask, other=0.0).to(tl.float32)
    top = v00 + fx * (v01 - v00)  # a + f*(b - a): a constant map stays exactly constant
    bot = v10 + fx * (v11 - v10)
    return top + fy * (bot - top)


@triton.jit
def _candidate(k, N_IN: tl.constexpr, N_OUT: tl.constexpr):
    """k-th extreme candidate along an axis (k in [0, 2*N_IN - 1)): first sample of cell k//2
    for even k, last sample of cell k//2 for odd k; integer arithmetic, clamped to the axis."""
    DEN: tl.constexpr = N_IN - 1 if N_IN > 1 else 1
    c = (k + 1) // 2
    first = (c * (N_OUT - 1) + (N_IN - 2)) // DEN
    idx = tl.where(k % 2 == 0, first, first - 1)
    return tl.minimum(tl.maximum(idx, 0), N_OUT - 1)


@triton.jit
def fused_refine_kernel(maps_ptr, n_maps, out_ptr,
                        H_IN: tl.constexpr, W_IN: tl.constexpr, H_OUT: tl.constexpr,
                        W_OUT: tl.constexpr, SCALE_Y: tl.constexpr, SCALE_X: tl.constexpr,
                        GAIN: tl.constexpr, CENTER: tl.constexpr, ZERO_RANGE: tl.constexpr,
                        ROWS_PER_PROG: tl.constexpr, OUT_KIND: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, CAND_BLOCK: tl.constexpr):
    part = tl.program_id(0)
    m = tl.program_id(1)
    if m < n_maps:
        base = maps_ptr + m.to(tl.int64) * (H_IN * W_IN)
        # 1. exact extremes of the upsampled map, from the candidate rows x columns.
        NY: tl.constexpr = 2 * H_IN - 1
        NX: tl.constexpr = 2 * W_IN - 1
        lo = tl.full([CAND_BLOCK], float("inf"), tl.float32)
        hi = tl.full([CAND_BLOCK], float("-inf"), tl.float32)
        for k0 in range(0, NY * NX, CAND_BLOCK):
            k = k0 + tl.arange(0, CAND_BLOCK)
            valid = k < NY * NX
            iy = _candidate(k // NX, H_IN, H_OUT)
            ix = _candidate(k % NX, W_IN, W_OUT)
            v = _sample(base, iy, ix, H_IN, W_IN, SCALE_Y, SCALE_X, valid)
            lo = tl.minimum(lo, tl.where(valid, v, float("inf")))
            hi = tl.maximum(hi, tl.where(valid, v, float("-inf")))
        vmin = tl.min(lo, axis=0)
        span = tl.max(hi, axis=0) - vmin
        span = tl.where(span == 0.0, ZERO_RANGE, span)
        scale = GAIN / span
        # 2. this program's rows: sample, normalise, sigmoid, store once.
        out_base = out_ptr + m.to(tl.int64) * (H_OUT * W_OUT)
        row_start = part * ROWS_PER_PROG
        for r0 in range(row_start, row_start + ROWS_PER_PROG, BLOCK_H):
            rows = r0 + tl.arange(0, BLOCK_H)
            for c0 in range(0, W_OUT, BLOCK_W):
                cols = c0 + tl.arange(0, BLOCK_W)
                mask = ((rows[:, None] < H_OUT) & (rows[:, None] < row_start + ROWS_PER_PROG)
                        & (cols[None, :] < W_OUT))
                v = _sample(base, rows[:, None], cols[None, :], H_IN, W_IN, SCALE_Y, SCALE_X,
                            mask)
                z = (v - vmin) * scale - GAIN * CENTER
                s = 1.0 / (1.0 + tl.exp(-z))
                ptrs = out_base + rows[:, None] * W_OUT + cols[None, :]
                if OUT_KIND == 2:
                    tl.store(ptrs, (s * 255.0 + 0.5).to(tl.uint8), mask=mask)
                elif OUT_KIND == 1:
                    tl.store(ptrs, s.to(tl.float16), mask=mask)
                else:
                    tl.store(ptrs, s, mask=mask)


def axis_scale(n_in: int, n_out: int) -> float:
    """float32 source step, as hamedge.ops.refine uses (and PyTorch computes)."""
    return float(np.float32((n_in - 1) / (n_out - 1))) if n_out > 1 else 0.0


def launch_config(n_maps: int, h: int, w: int, H: int, W: int, gain: float, center: float,
                  zero_range: float = 1e-5, out_kind: str = "float32", target_programs: int = 512
                  ) -> tuple[dict, int]:
    """Compile-time constants and programs per map for one problem (shared with the TRT plugin).

    Programs per map: enough programs overall to fill the GPU, but each program writes at least
    as many pixels as the map has extreme candidates, so the repeated extremes pass stays cheap.
    """
    candidates = (2 * h - 1) * (2 * w - 1)
    max_parts = max(1, (H * W) // max(candidates, 1))
    parts = max(1, min(math.ceil(target_programs / max(n_maps, 1)), max_parts,
                       math.ceil(H / BLOCK_H)))
    rows = math.ceil(H / parts)
    rows = math.ceil(rows / BLOCK_H) * BLOCK_H
    parts = math.ceil(H / rows)
    consts = dict(H_IN=h, W_IN=w, H_OUT=H, W_OUT=W, SCALE_Y=axis_scale(h, H),
                  SCALE_X=axis_scale(w, W), GAIN=float(gain), CENTER=float(center),
                  ZERO_RANGE=float(zero_range), ROWS_PER_PROG=rows, OUT_KIND=OUT_KINDS[out_kind],
                  BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, CAND_BLOCK=CAND_BLOCK)
    return consts, parts


def triton_refine(maps, H: int, W: int, gain: float = 100.0, center: float = 0.4,
                  out_dtype=None, zero_range: float = 1e-5):
    """Launch the kernel on a torch tensor (B, K, h, w) or (K, h, w), fp32 or fp16 (CUDA, or CPU
    under TRITON_INTERPRET=1). ``out_dtype``: torch.float32 (default), torch.float16, torch.uint8."""
    import torch

    out_dtype = torch.float32 if out_dtype is None else out_dtype
    kind = {torch.float32: "float32", torch.float16: "float16", torch.uint8: "uint8"}.get(out_dtype)
    if kind is None:
        raise ValueError(f"out_dtype must be float32, float16 or uint8, not {out_dtype}")
    if maps.dim() not in (3, 4):
        raise ValueError(f"maps must be (B, K, h, w) or (K, h, w), got {tuple(maps.shape)}")
    if maps.dtype not in (torch.float32, torch.float16):
        maps = maps.float()
    maps = maps.contiguous()
    lead = tuple(maps.shape[:-2])
    h, w = int(maps.shape[-2]), int(maps.shape[-1])
    n_maps = int(np.prod(lead))
    out = torch.empty((*lead, int(H), int(W)), dtype=out_dtype, device=maps.device)
    if n_maps == 0:
        return out
    target = 512
    if maps.is_cuda:
        target = 4 * torch.cuda.get_device_properties(maps.device).multi_processor_count
    consts, parts = launch_config(n_maps, h, w, int(H), int(W), gain, center, zero_range, kind,
                                  target)
    fused_refine_kernel[(parts, n_maps)](maps, n_maps, out, num_warps=NUM_WARPS, **consts)
    return out
