"""GPU benchmark of the fused refinement. Needs a CUDA GPU, torch and triton;
not run in the CPU-only development sessions (no GPU there). Run: python benchmarks/fused_refine_gpu.py

For 15 maps at 16/32/64 px -> 512x512, batch 1, 8 and 32:
  - correctness on the GPU: Triton kernel vs the numpy reference (max abs diff, must be < 1e-3);
  - time of the unfused torch chain (hamedge.kernels.torch_refine) vs the Triton kernel
    (fp32 and fp16 output), CUDA events, median of repeats;
  - the bandwidth floor: the time to write the output once (a device-to-device copy of the same
    number of bytes gives the achieved write+read bandwidth; floor = bytes / (copy_bytes_per_s / 2)
    i.e. write-only time at the measured bandwidth). Target: fused within 1.5x of the floor at batch 32.
Writes benchmarks/results/fused_refine_gpu.{md,json}.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from _common import RESULTS, record_line, run_record

from hamedge.fsutil import write_text  # noqa: E402
from hamedge.ops.refine import refine_reference  # noqa: E402
from hamedge.kernels.torch_refine import refine_maps_torch  # noqa: E402
from hamedge.kernels.triton_refine import triton_refine  # noqa: E402


def cuda_ms(fn, repeats=50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this benchmark needs one (see its docstring)")
    torch.set_grad_enabled(False)
    dev = torch.device("cuda")
    rng = np.random.default_rng(0)
    rows = []
    for low in (16, 32, 64):
        for batch in (1, 8, 32):
            maps = (rng.random((batch, 15, low, low), dtype=np.float32) ** 4) * 5
            x = torch.from_numpy(maps).to(dev)
            ref = refine_reference(maps, 512)
            got = triton_refine(x, 512, 512).cpu().numpy()
            err = float(np.abs(got - ref).max())
            out_bytes = batch * 15 * 512 * 512 * 4
            src = torch.empty(out_bytes // 4, device=dev)
            dst = torch.empty_like(src)
            copy_ms = cuda_ms(lambda: dst.copy_(src))
            floor_ms = copy_ms / 2  # a copy reads and writes the bytes; writing once is half
            row = {"low_res": low, "batch": batch, "max_abs_diff": err,
                   "unfused_torch_ms": cuda_ms(lambda: refine_maps_torch(x, (512, 512))),
                   "triton_fp32_ms": cuda_ms(lambda: triton_refine(x, 512, 512)),
                   "triton_fp16_ms": cuda_ms(lambda: triton_refine(x, 512, 512, out_dtype=torch.float16)),
                   "write_floor_fp32_ms": floor_ms,
                   "copy_bandwidth_GBps": 2 * out_bytes / copy_ms / 1e6}
            row["fused_over_floor"] = row["triton_fp32_ms"] / floor_ms
            row["speedup_vs_unfused"] = row["unfused_torch_ms"] / row["triton_fp32_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = run_record(gpu=torch.cuda.get_device_name())
    out = RESULTS
    write_text(out / "fused_refine_gpu.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Fused heatmap refinement, GPU ({meta['gpu']})", "", f"Measured {record_line(meta)}",
             "",
             "| maps | batch | unfused torch ms | triton fp32 ms | triton fp16 ms | write floor ms "
             "| fused/floor | speedup | max abs diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['low_res']}->512 | {r['batch']} | {r['unfused_torch_ms']:.3f} | "
                     f"{r['triton_fp32_ms']:.3f} | {r['triton_fp16_ms']:.3f} | "
                     f"{r['write_floor_fp32_ms']:.3f} | {r['fused_over_floor']:.2f} | "
                     f"{r['speedup_vs_unfused']:.1f}x | {r['max_abs_diff']:.1e} |")
    write_text(out / "fused_refine_gpu.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
