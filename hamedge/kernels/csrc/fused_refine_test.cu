// Stand-alone check of the CUDA kernels against a naive full-resolution CPU reference
// (upsample, min/max over the upsampled map, normalise, sigmoid). Build and run on a GPU machine:
//   nvcc -O2 -std=c++17 -arch=native fused_refine_test.cu fused_refine_kernel.cu -o fused_refine_test
//   ./fused_refine_test        (prints the max abs difference per case; exit code 1 on failure)
#include "fused_refine_kernel.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>

static float scale_of(int n_in, int n_out) {
    return n_out > 1 ? (float)((double)(n_in - 1) / (n_out - 1)) : 0.0f;
}

static void reference(const std::vector<float>& maps, int n, int h, int w, int H, int W,
                      float gain, float center, std::vector<float>& out) {
    out.assign((size_t)n * H * W, 0.0f);
    float sy = scale_of(h, H), sx = scale_of(w, W);
    for (int m = 0; m < n; ++m) {
        const float* map = &maps[(size_t)m * h * w];
        float* o = &out[(size_t)m * H * W];
        for (int i = 0; i < H; ++i) {
            float fy_src = i * sy;
            int y0 = std::min((int)floorf(fy_src), h - 1), y1 = std::min(y0 + 1, h - 1);
            float fy = fy_src - y0;
            for (int j = 0; j < W; ++j) {
                float fx_src = j * sx;
                int x0 = std::min((int)floorf(fx_src), w - 1), x1 = std::min(x0 + 1, w - 1);
                float fx = fx_src - x0;
                float top = map[y0 * w + x0] + fx * (map[y0 * w + x1] - map[y0 * w + x0]);
                float bot = map[y1 * w + x0] + fx * (map[y1 * w + x1] - map[y1 * w + x0]);
                o[i * W + j] = top + fy * (bot - top);
            }
        }
        float lo = *std::min_element(o, o + H * W), hi = *std::max_element(o, o + H * W);
        float span = hi - lo == 0.0f ? 1e-5f : hi - lo;
        for (int k = 0; k < H * W; ++k) o[k] = 1.0f / (1.0f + expf(-gain * ((o[k] - lo) / span - center)));
    }
}

int main() {
    const int cases[][5] = {{15, 16, 16, 512, 512}, {15, 64, 64, 512, 512}, {6, 7, 9, 100, 33},
                            {480, 16, 16, 512, 512}, {2, 1, 5, 9, 17}};
    int failed = 0;
    srand(0);
    for (const auto& c : cases) {
        int n = c[0], h = c[1], w = c[2], H = c[3], W = c[4];
        std::vector<float> maps((size_t)n * h * w), ref, got((size_t)n * H * W);
        for (auto& v : maps) { float r = rand() / (float)RAND_MAX; v = r * r * r * r * 5.0f; }
        std::fill(maps.begin(), maps.begin() + h * w, 0.0f);  // a zero-range map
        reference(maps, n, h, w, H, W, 100.0f, 0.4f, ref);
        void *d_in, *d_out, *d_ws;
        cudaMalloc(&d_in, maps.size() * 4);
        cudaMalloc(&d_out, got.size() * 4);
        cudaMalloc(&d_ws, hamedge_fused_refine_workspace(n));
        cudaMemcpy(d_in, maps.data(), maps.size() * 4, cudaMemcpyHostToDevice);
        int err = hamedge_fused_refine(d_in, HAMEDGE_F32, d_out, HAMEDGE_F32, n, h, w, H, W, 100.0f,
                                       0.4f, 1e-5f, d_ws, 0);
        cudaMemcpy(got.data(), d_out, got.size() * 4, cudaMemcpyDeviceToHost);
        if (err == 0) err = (int)cudaDeviceSynchronize();
        float worst = 0.0f;
        for (size_t k = 0; k < got.size(); ++k) worst = fmaxf(worst, fabsf(got[k] - ref[k]));
        bool ok = err == 0 && worst < 1e-3f;
        failed += !ok;
        printf("%s n=%d %dx%d -> %dx%d max|diff|=%.3g (err %d)\n", ok ? "ok  " : "FAIL", n, h, w, H,
               W, worst, err);
        cudaFree(d_in); cudaFree(d_out); cudaFree(d_ws);
    }
    return failed ? 1 : 0;
}
