// hamedge fused attention refinement: C API of the CUDA kernels (fused_refine_kernel.cu).
// Same math as hamedge/ops/refine.py: bilinear upsampling (align_corners=True) of each raw map
// (N, h, w) to (H, W), min-max normalisation with the *upsampled* map's exact extremes (a zero
// range becomes zero_range), sigmoid(gain * (x - center)); written once, in the output dtype.
#pragma once

#include <cstddef>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// Data types of the C API (match nvinfer1::DataType only by name, not value).
enum HamedgeDType { HAMEDGE_F32 = 0, HAMEDGE_F16 = 1, HAMEDGE_U8 = 2 };

// Bytes of device workspace the launcher needs for n_maps maps (per-map minimum and scale).
size_t hamedge_fused_refine_workspace(int n_maps);

// Launch on `stream`. maps: n_maps*h*w values (F32 or F16); out: n_maps*H*W values (F32, F16, or
// U8 = round(255*value)); workspace: hamedge_fused_refine_workspace(n_maps) bytes of device memory.
// Returns a cudaError_t value (0 = launched; kernel errors surface on the stream as usual).
int hamedge_fused_refine(const void* maps, int in_dtype, void* out, int out_dtype, int n_maps,
                         int h, int w, int H, int W, float gain, float center, float zero_range,
                         void* workspace, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
