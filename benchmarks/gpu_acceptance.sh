#!/usr/bin/env bash
# One call on a lent NVIDIA GPU machine (H100/H200; torch, triton, onnx, onnxruntime from the
# machine's image; no TensorRT, no package registry): every CUDA path hamedge has without TensorRT,
# checked against float64 references and timed, in under 8 minutes. Figures go to $OUT:
# results.json (everything), table.md (the short table, also printed last), machine.txt, logs.
#
#   HAMEDGE_COMMIT=$(git rev-parse --short HEAD) benchmarks/gpu_acceptance.sh     (on the GPU machine)
#   benchmarks/gpu_acceptance.sh --dry-run     (here, on the CPU: the same logic on tiny sizes)
#
# Steps: nvidia-smi; the CUDA kernel harness (hamedge/kernels/csrc/fused_refine_test.cu) and the kernel
# as a shared library, built with nvcc where it exists, in the background while
# benchmarks/gpu_acceptance.py runs (see its docstring for the sections and the method).
# Time: the builds are capped at 150 s, the driver at 330 s (its own budget) and 360 s.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CSRC=$ROOT/hamedge/kernels/csrc
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$ROOT/out/gpu_acceptance}
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
[ -n "${HAMEDGE_COMMIT:-}" ] || export HAMEDGE_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
start=$SECONDS

{ date -u; uname -a; nproc; nvidia-smi 2>&1 || echo "no nvidia-smi"; command -v nvcc && nvcc --version; } \
    > "$OUT/machine.txt" 2>&1

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
harness_args=()
if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1  # before anything imports triton
    harness_args=(--dry-run --budget 240 --harness-why "dry run: no GPU")
elif ! command -v nvcc >/dev/null; then
    harness_args=(--harness-why "no nvcc on this machine")
else
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
    arch=${cap:+sm_$cap}
    arch=${arch:-native}
    # Built in the background while the driver measures the rest; the driver runs its CUDA
    # section last and waits for build.done.
    (   timeout 150 nvcc -O3 -std=c++17 -arch="$arch" "$CSRC/fused_refine_test.cu" \
            "$CSRC/fused_refine_kernel.cu" -o "$BUILD/fused_refine_test" > "$OUT/nvcc_harness.log" 2>&1 &
        timeout 150 nvcc -O3 -std=c++17 -arch="$arch" -shared -Xcompiler -fPIC "$CSRC/fused_refine_kernel.cu" \
            -o "$BUILD/libhamedge_fused_refine_kernel.so" > "$OUT/nvcc_lib.log" 2>&1
        wait
        touch "$BUILD/build.done" ) &
    harness_args=(--harness "$BUILD/fused_refine_test" --cuda-lib "$BUILD/libhamedge_fused_refine_kernel.so"
                  --build-done "$BUILD/build.done" --harness-why "nvcc failed (see nvcc_*.log)")
fi

timeout 360 "$PY" "$ROOT/benchmarks/gpu_acceptance.py" --out "$OUT" "${harness_args[@]}" 2>&1 \
    | tee "$OUT/driver.log" | grep -v '^|' | grep -v '^gpu_acceptance\|^ceilings:'
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "the driver ran past its 360 s limit; results.json has what was done"
echo "total $((SECONDS - start)) s; results in $OUT"
[ -f "$OUT/table.md" ] && cat "$OUT/table.md"
exit "$status"
