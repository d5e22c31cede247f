"""The heatmap math, once: HAM's attention refinement in numpy (no torch here; the slim runtime uses it).

HAM refines a raw attention map (B, K, h, w) into a heatmap (B, K, H, W) in four steps (the HAM paper and
its reference code):
bilinear upsampling with align_corners=True, min-max normalisation over the *upsampled* map (a zero
range becomes ``zero_range``), then ``sigmoid(gain * (x - center))``.

- ``refine_reference`` does exactly that, step by step, at full resolution.
- ``upsampled_extrema`` gets the upsampled map's exact minimum and maximum from the low-resolution
  map. Bilinear interpolation is linear along each axis inside a grid cell, so over the output
  samples that fall in a cell the extremes lie on the cell's first or last sample row and column.
  Evaluating the upsampled map only on those rows and columns (at most 2(h-1) x 2(w-1) points)
  gives the exact extremes; the grid's own extremes are wrong whenever (H-1)/(h-1) is not an
  integer (16->512, 64->512), because then grid points are not sampled.
- ``refine`` is the fused form: with the extremes known, the affine normalisation (and gain and
  centre) is applied to the low-resolution map -- upsampling preserves affine maps -- and the
  upsampling and the sigmoid run in one cache-blocked pass, writing the output once in the dtype
  asked for.

Interpolation convention (shared by every implementation: Triton, CUDA, export graph): output index
i samples source position ``src = i * s`` with ``s = float32((h-1)/(H-1))`` (0 when H == 1), computed
in float32 like PyTorch; ``i0 = min(floor(src), h-1)``, ``i1 = min(i0+1, h-1)``, ``f = src - i0``, and
the value is ``a + f*(b - a)`` (this form reproduces a constant map exactly, so a constant map has a
range of exactly zero; PyTorch's ``w0*a + w1*b`` does not always, and the reference chain then
normalises rounding noise of a non-zero constant map to [0, 1] -- we return the zero-range result).
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hamedge.spec import ModelSpec

__all__ = [
    "axis_weights", "axis_candidates", "refine_reference", "upsampled_extrema", "refine",
    "refine_spec", "binary_masks", "OUT_DTYPES",
]

OUT_DTYPES = (np.float32, np.float16, np.uint8)


# -- interpolation geometry ---------------------------------------------------------------------
def _scale(n_in: int, n_out: int) -> np.float32:
    return np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)


@functools.lru_cache(maxsize=64)
def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, f) for every output index along one axis (align_corners=True, float32 positions)."""
    src = np.arange(n_out, dtype=np.float32) * _scale(n_in, n_out)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0.astype(np.float32)).astype(np.float32)
    for arr in (i0, i1, frac):
        arr.setflags(write=False)
    return i0, i1, frac


@functools.lru_cache(maxsize=64)
def axis_candidates(n_in: int, n_out: int) -> np.ndarray:
    """Output indices that can hold an extreme: the first and last sample of every grid cell.

    Cell c spans source positions [c, c+1]; its first sample is ceil(c*(n_out-1)/(n_in-1)),
    computed in integers so float rounding cannot move a sample to the wrong cell.
    """
    if n_in == 1 or n_out == 1:
        return np.array([0], dtype=np.int64) if n_out == 1 else np.array([0, n_out - 1], np.int64)
    cells = np.arange(n_in - 1, dtype=np.int64)
    first = (cells * (n_out - 1) + (n_in - 2)) // (n_in - 1)
    last = np.append(first[1:] - 1, n_out - 1)
    cand = np.unique(np.clip(np.concatenate([first, last]), 0, n_out - 1))
    cand.setflags(write=False)
    return cand


def _lerp_axis(x: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, frac: np.ndarray
               ) -> np.ndarray:
    """a + f*(b - a) along ``axis`` (float32)."""
    a = np.take(x, i0, axis=axis)
    d = np.take(x, i1, axis=axis)
    d -= a
    shape = [1] * x.ndim
    shape[axis] = -1
    d *= frac.reshape(shape)
    d += a
    return d


def _upsample_at(maps: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    """Upsampled values of (N, h, w) maps at the output rows/cols described by (i0, i1, f)."""
    x = _lerp_axis(maps, 2, *cols)
    return _lerp_axis(x, 1, *rows)


def _as_maps(maps: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """(B, K, h, w) or (K, h, w) -> contiguous float32 (N, h, w) and the leading shape."""
    arr = np.asarray(maps)
    if arr.ndim not in (3, 4):
        raise ValueError(f"attention maps must be (B, K, h, w) or (K, h, w), got shape {arr.shape}")
    if arr.shape[-1] < 1 or arr.shape[-2] < 1:
        raise ValueError(f"attention maps have an empty spatial size {arr.shape[-2:]}")
    lead = arr.shape[:-2]
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1, arr.shape[-2], arr.shape[-1])
    return flat, lead


def _size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive, got {size}")
    return height, width


def _sigmoid_(z: np.ndarray) -> np.ndarray:
    """In-place float32 sigmoid (exp overflow to inf gives exactly 0, as it should)."""
    with np.errstate(over="ignore"):
        np.negative(z, out=z)
        np.exp(z, out=z)
    z += 1.0
    np.reciprocal(z, out=z)
    return z


def _span(lo: np.ndarray, hi: np.ndarray, zero_range: float) -> np.ndarray:
    span = (hi - lo).astype(np.float32)
    span[span == 0] = zero_range
    return span


# -- the reference ------------------------------------------------------------------------------
def refine_reference(maps: np.ndarray, size, gain: float = 100.0, center: float = 0.4,
                     zero_range: float = 1e-5) -> np.ndarray:
    """HAM's refinement done the reference way, at full resolution: float32 (B, K, H, W)."""
    flat, lead = _as_maps(maps)
    height, width = _size(size)
    h, w = flat.shape[1:]
    up = _upsample_at(flat, axis_weights(h, height), axis_weights(w, width))
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    up -= lo
    up /= _span(lo, hi, zero_range)
    up -= np.float32(center)
    up *= np.float32(gain)
    return _sigmoid_(up).reshape(*lead, height, width)


# -- exact extremes -----------------------------------------------------------------------------
def _extrema_flat(flat: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = flat.shape[1:]
    ry, rx = axis_weights(h, height), axis_weights(w, width)
    cy, cx = axis_candidates(h, height), axis_candidates(w, width)
    vals = _upsample_at(flat, tuple(a[cy] for a in ry), tuple(a[cx] for a in rx))
    return vals.min(axis=(1, 2)), vals.max(axis=(1, 2))


def upsampled_extrema(maps: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
    """Exact (min, max) of each map after upsampling to ``size``, shape (B, K) (or (K,)), computed
    on the cells' outermost sample rows/columns only, never at full resolution."""
    flat, lead = _as_maps(maps)
    lo, hi = _extrema_flat(flat, *_size(size))
    return lo.reshape(lead), hi.reshape(lead)


# -- the fused fast path ------------------------------------------------------------------------
_POOL: ThreadPoolExecutor | None = None
_BLOCK_FLOATS = 1 << 16  # 256 KiB of float32 per block: well inside a core's L2


def _threads() -> int:
    env = os.environ.get("HAMEDGE_REFINE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="hamedge-refine")
    return _POOL


def _expand_rows(cols_up: np.ndarray, out: np.ndarray, rows: tuple,
                 cells: list[tuple[int, int, int]], kind: str) -> None:
    """Fill ``out`` (n, H, W) from x-upsampled rows ``cols_up`` (n, h+1, W) of the half logit.

    Cell by cell (the rows of one cell share their two source rows), the rows are a 2-tap matrix
    product (numpy's batched matmul: one small BLAS call per map, much faster than broadcast
    multiply-add), then sigmoid(2u) = 0.5 + 0.5*tanh(u) in place while the block is in cache
    (tanh is cheaper than exp + add + reciprocal, and saturates cleanly; values below ~3e-8 come
    out as 0). Runs in a worker thread; numpy releases the GIL inside each call.
    """
    frac = rows[2]
    n, _, width = out.shape
    max_rows = max(r1 - r0 for _, r0, r1 in cells)
    group = max(1, _BLOCK_FLOATS // (max_rows * width))  # maps per block: keep blocks in L2
    for g in range(0, n, group):
        dst, src = out[g:g + group], cols_up[g:g + group]
        for c, r0, r1 in cells:
            weights = np.empty((r1 - r0, 2), np.float32)
            weights[:, 1] = frac[r0:r1]
            weights[:, 0] = 1.0 - weights[:, 1]
            blk = dst[:, r0:r1, :] if kind == "float32" else np.empty(
                (dst.shape[0], r1 - r0, width), np.float32)
            np.matmul(weights, src[:, c:c + 2, :], out=blk)
            np.tanh(blk, out=blk)
            if kind == "uint8":  # round-half-up of 255*s = trunc(127.5*t + 128)
                blk *= 127.5
                np.add(blk, 128.0, out=dst[:, r0:r1, :], casting="unsafe")
            else:
                blk *= 0.5
                np.add(blk, 0.5, out=dst[:, r0:r1, :], casting="same_kind")


def _row_cells(rows: tuple) -> list[tuple[int, int, int]]:
    """Runs of consecutive output rows that share their first source row: (cell, start, stop)."""
    i0 = rows[0]
    starts = np.flatnonzero(np.diff(i0)) + 1
    bounds = np.concatenate([[0], starts, [len(i0)]])
    return [(int(i0[s]), int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:])]


def refine(maps: np.ndarray, size, gain: float = 100.0, center: float = 0.4,
           zero_range: float = 1e-5, out_dtype=np.float32) -> np.ndarray:
    """The fused refinement: same result as ``refine_reference`` (to float32 rounding), faster.

    ``out_dtype``: float32, float16, or uint8 (``round(255 * value)``, halves rounded up).
    """
    kind = np.dtype(out_dtype).name
    if kind not in ("float32", "float16", "uint8"):
        raise ValueError(f"out_dtype must be float32, float16 or uint8, not {kind}")
    flat, lead = _as_maps(maps)
    height, width = _size(size)
    n, h, w = flat.shape
    lo, hi = _extrema_flat(flat, height, width)
    span = _span(lo, hi, zero_range)
    # Half logit at low resolution: gain/2*((m - lo)/span - center). Upsampling is affine-
    # preserving, so upsampling this equals the reference's (half) logit of the upsampled map.
    z = flat - lo[:, None, None]
    z *= (np.float32(0.5 * gain) / span)[:, None, None]
    z -= np.float32(0.5 * gain * center)
    rows, cols = axis_weights(h, height), axis_weights(w, width)
    cols_up = np.empty((n, h + 1, width), np.float32)  # last row repeated: every cell has 2 rows
    cols_up[:, :h] = _lerp_axis(z, 2, *cols)
    cols_up[:, h] = cols_up[:, h - 1]
    out = np.empty((n, height, width), dtype=np.dtype(kind))
    cells = _row_cells(rows)

    workers = _threads()
    # Split the work into about two chunks per worker, along maps (or rows when maps are few).
    if workers == 1 or n * height * width < (1 << 16):
        _expand_rows(cols_up, out, rows, cells, kind)
    else:
        parts = max(1, min(n, 2 * workers))
        if parts >= 2 * workers or n >= workers:
            bounds = np.linspace(0, n, parts + 1).astype(int)
            jobs = [(slice(a, b), cells) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        else:  # few maps: split each map's cells instead
            per = max(1, math.ceil(len(cells) / (2 * workers)))
            jobs = [(slice(0, n), cells[i:i + per]) for i in range(0, len(cells), per)]
        futures = [_pool().submit(_expand_rows, cols_up[sl], out[sl], rows, cs, kind)
                   for sl, cs in jobs]
        for fut in futures:
            fut.result()
    return out.reshape(*lead, height, width)


def refine_spec(maps: np.ndarray, spec: "ModelSpec", size=None, out_dtype=np.float32) -> np.ndarray:
    """``refine`` with gain and centre from a ModelSpec; size defaults to the spec's input size."""
    size = spec.input_size if size is None else size
    return refine(maps, size, gain=spec.cam_gain, center=spec.cam_center, out_dtype=out_dtype)


# -- binary masks: threshold the normalised map, no sigmoid -------------------------------------
def _normalised_maps(maps: np.ndarray, size, zero_range: float = 1e-5) -> np.ndarray:
    """Min-max normalised upsampled maps (B, K, H, W) float32 (in [0, 1]; 0 for zero-range maps)."""
    flat, lead = _as_maps(maps)
    height, width = _size(size)
    h, w = flat.shape[1:]
    lo, hi = _extrema_flat(flat, height, width)
    z = flat - lo[:, None, None]
    z /= _span(lo, hi, zero_range)[:, None, None]
    up = _upsample_at(z, axis_weights(h, height), axis_weights(w, width))
    return up.reshape(*lead, height, width)


def binary_masks(maps: np.ndarray, size, spec: "ModelSpec", threshold: float | None = None
                 ) -> np.ndarray:
    """Boolean (B, K, H, W): refined >= threshold (default spec.cam_threshold), decided on the
    normalised map: refined >= t  <=>  normalised >= center + logit(t)/gain
    (ModelSpec.cam_binary_level).

    This is the exact mathematical comparison. A float32 sigmoid can differ only for pixels whose
    normalised value lies within a few float32 ulps of the level (and, for thresholds so close to 1
    that float32 rounds the sigmoid to 1.0 early, the float32 refined map would wrongly include
    more pixels); metrics and boxes use this function so every caller decides the same way.
    """
    if threshold is not None:
        spec = spec.replace(cam_threshold=threshold)
    return _normalised_maps(maps, spec.input_size if size is None else size) >= np.float32(spec.cam_binary_level)
