// CUDA kernels of the fused attention refinement (see fused_refine_kernel.h and
// hamedge/ops/refine.py for the math; hamedge/kernels/triton_refine.py is the same algorithm).
//
// 1. extrema kernel, one block per map: the upsampled map's exact min/max. Inside a grid cell
//    bilinear interpolation is linear along each axis, so the extremes over the cell's samples
//    lie on its first/last sample rows and columns: (2h-1) x (2w-1) candidate points, never
//    the full-resolution map. Writes the map's minimum and gain/span to the workspace.
// 2. refine kernel: every output pixel sampled, normalised, passed through the sigmoid and
//    stored once in the output type.
// Interpolation convention shared with every implementation: src = i * s, s = float((h-1)/(H-1))
// (0 when H == 1), i0 = min(floor(src), h-1), i1 = min(i0+1, h-1), value a + f*(b - a).

#include "fused_refine_kernel.h"

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

namespace {

constexpr int kExtremaThreads = 256;
constexpr int kTileW = 64;
constexpr int kTileH = 4;

template <typename T>
__device__ __forceinline__ float load_f32(const T* p) { return static_cast<float>(*p); }
template <>
__device__ __forceinline__ float load_f32<__half>(const __half* p) { return __half2float(*p); }

template <typename T>
__device__ __forceinline__ void store_f32(T* p, float v);
template <>
__device__ __forceinline__ void store_f32<float>(float* p, float v) { *p = v; }
template <>
__device__ __forceinline__ void store_f32<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <>
__device__ __forceinline__ void store_f32<uint8_t>(uint8_t* p, float v) {
    *p = static_cast<uint8_t>(v * 255.0f + 0.5f);  // round half up; v in [0, 1]
}

struct Axis {
    int n_in, n_out;
    float scale;
};

__device__ __forceinline__ void axis_pos(const Axis& a, int i, int& i0, int& i1, float& f) {
    float src = static_cast<float>(i) * a.scale;
    i0 = min(static_cast<int>(floorf(src)), a.n_in - 1);
    i1 = min(i0 + 1, a.n_in - 1);
    f = src - static_cast<float>(i0);
}

template <typename Tin>
__device__ __forceinline__ float sample(const Tin* map, int w, const Axis& ay, const Axis& ax,
                                        int iy, int ix) {
    int y0, y1, x0, x1;
    float fy, fx;
    axis_pos(ay, iy, y0, y1, fy);
    axis_pos(ax, ix, x0, x1, fx);
    float v00 = load_f32(map + y0 * w + x0), v01 = load_f32(map + y0 * w + x1);
    float v10 = load_f32(map + y1 * w + x0), v11 = load_f32(map + y1 * w + x1);
    float top = v00 + fx * (v01 - v00);  // exact for a constant map
    float bot = v10 + fx * (v11 - v10);
    return top + fy * (bot - top);
}

// k-th extreme candidate along an axis, k in [0, 2*n_in - 1): first sample of cell (k+1)/2 for
// even k, the sample before it (last of the previous cell) for odd k. Integer arithmetic.
__device__ __forceinline__ int candidate(const Axis& a, int k) {
    int den = a.n_in > 1 ? a.n_in - 1 : 1;
    int c = (k + 1) / 2;
    int first = (c * (a.n_out - 1) + (a.n_in - 2)) / den;
    int idx = (k % 2 == 0) ? first : first - 1;
    return min(max(idx, 0), a.n_out - 1);
}

template <typename Tin>
__global__ void extrema_kernel(const Tin* __restrict__ maps, int h, int w, Axis ay, Axis ax,
                               float gain, float zero_range, float2* __restrict__ stats) {
    const int m = blockIdx.x;
    const Tin* map = maps + static_cast<int64_t>(m) * h * w;
    const int ny = 2 * h - 1, nx = 2 * w - 1, total = ny * nx;
    float lo = INFINITY, hi = -INFINITY;
    for (int k = threadIdx.x; k < total; k += blockDim.x) {
        float v = sample(map, w, ay, ax, candidate(ay, k / nx), candidate(ax, k % nx));
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    __shared__ float s_lo[kExtremaThreads], s_hi[kExtremaThreads];
    s_lo[threadIdx.x] = lo;
    s_hi[threadIdx.x] = hi;
    __syncthreads();
    for (int step = blockDim.x / 2; step > 0; step >>= 1) {
        if (threadIdx.x < step) {
            s_lo[threadIdx.x] = fminf(s_lo[threadIdx.x], s_lo[threadIdx.x + step]);
            s_hi[threadIdx.x] = fmaxf(s_hi[threadIdx.x], s_hi[threadIdx.x + step]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float span = s_hi[0] - s_lo[0];
        if (span == 0.0f) span = zero_range;
        stats[m] = make_float2(s_lo[0], gain / span);
    }
}

template <typename Tin, typename Tout>
__global__ void refine_kernel(const Tin* __restrict__ maps, Tout* __restrict__ out, int h, int w,
                              Axis ay, Axis ax, float gain_center,
                              const float2* __restrict__ stats) {
    const int m = blockIdx.z;
    const int ix = blockIdx.x * kTileW + threadIdx.x;
    const int iy = blockIdx.y * kTileH + threadIdx.y;
    if (ix >= ax.n_out || iy >= ay.n_out) return;
    const Tin* map = maps + static_cast<int64_t>(m) * h * w;
    const float2 st = stats[m];
    float z = (sample(map, w, ay, ax, iy, ix) - st.x) * st.y - gain_center;
    float s = 1.0f / (1.0f + __expf(-z));
    store_f32(out + (static_cast<int64_t>(m) * ay.n_out + iy) * ax.n_out + ix, s);
}

float axis_scale(int n_in, int n_out) {
    // Rounded from double like Python's float32((h-1)/(H-1)), so every implementation agrees.
    return n_out > 1 ? static_cast<float>(static_cast<double>(n_in - 1) / (n_out - 1)) : 0.0f;
}

template <typename Tin, typename Tout>
cudaError_t launch(const Tin* maps, Tout* out, int n, int h, int w, int H, int W, float gain,
                   float center, float zero_range, float2* stats, cudaStream_t stream) {
    Axis ay{h, H, axis_scale(h, H)}, ax{w, W, axis_scale(w, W)};
    extrema_kernel<Tin><<<n, kExtremaThreads, 0, stream>>>(maps, h, w, ay, ax, gain, zero_range,
                                                           stats);
    dim3 block(kTileW, kTileH);
    dim3 grid((W + kTileW - 1) / kTileW, (H + kTileH - 1) / kTileH, n);
    refine_kernel<Tin, Tout><<<grid, block, 0, stream>>>(maps, out, h, w, ay, ax, gain * center,
                                                         stats);
    return cudaGetLastError();
}

template <typename Tin>
cudaError_t dispatch_out(const Tin* maps, void* out, int out_dtype, int n, int h, int w, int H,
                         int W, float gain, float center, float zr, float2* st, cudaStream_t s) {
    switch (out_dtype) {
        case HAMEDGE_F32: return launch(maps, static_cast<float*>(out), n, h, w, H, W, gain, center, zr, st, s);
        case HAMEDGE_F16: return launch(maps, static_cast<__half*>(out), n, h, w, H, W, gain, center, zr, st, s);
        case HAMEDGE_U8: return launch(maps, static_cast<uint8_t*>(out), n, h, w, H, W, gain, center, zr, st, s);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

extern "C" size_t hamedge_fused_refine_workspace(int n_maps) {
    return static_cast<size_t>(n_maps > 0 ? n_maps : 0) * sizeof(float2);
}

extern "C" int hamedge_fused_refine(const void* maps, int in_dtype, void* out, int out_dtype,
                                    int n_maps, int h, int w, int H, int W, float gain,
                                    float center, float zero_range, void* workspace,
                                    cudaStream_t stream) {
    if (n_maps == 0) return cudaSuccess;
    if (n_maps < 0 || h < 1 || w < 1 || H < 1 || W < 1 || n_maps > 65535 || !workspace)
        return cudaErrorInvalidValue;
    float2* stats = static_cast<float2*>(workspace);
    switch (in_dtype) {
        case HAMEDGE_F32:
            return dispatch_out(static_cast<const float*>(maps), out, out_dtype, n_maps, h, w, H, W,
                                gain, center, zero_range, stats, stream);
        case HAMEDGE_F16:
            return dispatch_out(static_cast<const __half*>(maps), out, out_dtype, n_maps, h, w, H,
                                W, gain, center, zero_range, stats, stream);
        default: return cudaErrorInvalidValue;
    }
}
