"""CPU benchmark of the heatmap refinement: the reference way vs the fused op.

15 maps (anomaly + 14 classes) at 16, 32 and 64 px to 512x512, batch 1 and 8, all in one run,
methods interleaved repeat by repeat (so background load hits them alike), median of repeats.
Methods:
  reference_torch  the reference repository's way: F.interpolate, a per-map min/max loop, sigmoid
  naive_torch      hamedge.kernels.torch_refine (the same chain, vectorised over maps)
  reference_numpy  hamedge.ops.refine.refine_reference
  fused_numpy      hamedge.ops.refine.refine (float32 out), and fused_numpy_u8 (uint8 out)
  fused_torch_op   torch.ops.hamedge.fused_refine on CPU
Writes benchmarks/results/fused_refine_cpu.{md,json}. Run: python benchmarks/fused_refine.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import RESULTS, record_line, run_record

from hamedge.fsutil import write_text  # noqa: E402
from hamedge.ops.refine import refine, refine_reference  # noqa: E402
from hamedge.kernels.torch_op import refine_torch  # noqa: E402
from hamedge.kernels.torch_refine import refine_maps_torch  # noqa: E402


def reference_torch(cams: torch.Tensor, size, gain=100.0, center=0.4) -> torch.Tensor:
    """The reference repository's refinement, restated: upsample, then map by map min-max."""
    up = F.interpolate(cams, size, mode="bilinear", align_corners=True)
    b, k = up.shape[:2]
    maps = []
    for i in range(k):
        flat = up[:, i].reshape(b, -1)
        lo = flat.min(dim=1, keepdim=True)[0]
        span = flat.max(dim=1, keepdim=True)[0] - lo
        span[span == 0] = 1e-5
        maps.append(((flat - lo) / span).view(b, 1, *size))
    return torch.sigmoid(gain * (torch.cat(maps, dim=1) - center))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    rows = []
    for low in (16, 32, 64):
        for batch in (1, 8):
            maps = (rng.random((batch, 15, low, low), dtype=np.float32) ** 4) * 5
            x = torch.from_numpy(maps)
            size = (512, 512)
            methods = {
                "reference_torch": lambda: reference_torch(x, size),
                "naive_torch": lambda: refine_maps_torch(x, size),
                "reference_numpy": lambda: refine_reference(maps, size),
                "fused_numpy": lambda: refine(maps, size),
                "fused_numpy_u8": lambda: refine(maps, size, out_dtype=np.uint8),
                "fused_torch_op": lambda: refine_torch(x, size),
            }
            err = float(np.abs(refine(maps, size) - reference_torch(x, size).numpy()).max())
            for fn in methods.values():  # warm-up
                fn()
            times = {name: [] for name in methods}
            for _ in range(args.repeats):
                for name, fn in methods.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            ms = {name: 1e3 * float(np.median(t)) / batch for name, t in times.items()}
            row = {"low_res": low, "batch": batch, "ms_per_image": ms, "max_abs_diff": err,
                   "speedup_fused_vs_reference_torch": ms["reference_torch"] / ms["fused_numpy"]}
            rows.append(row)
            print(f"{low:>3}->512 batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
                  + f" ms/img; fused {row['speedup_fused_vs_reference_torch']:.1f}x; "
                  f"max|diff| {err:.1e}", flush=True)
    meta = run_record(torch_threads=torch.get_num_threads(), repeats=args.repeats, maps=15,
                      size=512)
    write_text(args.out / "fused_refine_cpu.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    names = list(rows[0]["ms_per_image"])
    lines = ["# Fused heatmap refinement, CPU", "",
             f"Measured {record_line(meta)} torch {torch.__version__} "
             f"({meta['torch_threads']} threads), numpy {np.__version__}.", "",
             "15 maps to 512x512, ms per image, median of "
             f"{args.repeats} interleaved repeats; speedup = reference_torch / fused_numpy.", "",
             "| maps | batch | " + " | ".join(names) + " | speedup | max abs diff |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['low_res']}->512 | {r['batch']} | "
                     + " | ".join(f"{r['ms_per_image'][n]:.2f}" for n in names)
                     + f" | {r['speedup_fused_vs_reference_torch']:.1f}x | {r['max_abs_diff']:.1e} |")
    write_text(args.out / "fused_refine_cpu.md", "\n".join(lines) + "\n")
    print(f"wrote {args.out / 'fused_refine_cpu.md'}")


if __name__ == "__main__":
    main()
