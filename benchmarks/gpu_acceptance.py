"""Driver of benchmarks/gpu_acceptance.sh: every CUDA path hamedge has without TensorRT, checked
against a float64 reference and timed, in one call on a lent NVIDIA GPU machine (H100/H200 with
torch, triton, onnx and onnxruntime from the machine's image; no TensorRT, no package registry).

Sections (each records "ok", "FAIL", "skipped: why" or "error: why"; one failing does not stop
the others; a time budget skips what would not fit):
  ceilings       device-to-device copy bandwidth (bytes read + written) and a bf16 matrix rate
  triton         the Triton refinement kernel vs float64 and vs the numpy reference
                 (hamedge.ops.refine.refine_reference), fp32/fp16/uint8 outputs, timed against
                 the unfused torch chain, the torch custom op and its output-write floor
  cuda_kernel    the CUDA kernel (hamedge/kernels/csrc/fused_refine_kernel.cu, built by the shell
                 script as a shared library) likewise, and the stand-alone harness's verdict
  torch          the torch backend (hamedge.runtime) fp32 and fp16 on CUDA: parity with a float64
                 CPU forward of the same weights, throughput model-only (CUDA events) and end to
                 end (numpy in, numpy out); the published resnet50/stride-8/512 configuration
                 (random weights) model-only too
  onnxruntime    ONNX Runtime's CUDA execution provider on the exported default model, likewise

Method: fresh random inputs for every check; outputs poisoned with NaN before each checked run
and checked to be fully written; warm-up first; CUDA events around the timed region; median of
repeats with the interquartile range beside it; inputs rotated among several sets.

--dry-run runs the same logic on the CPU on tiny sizes (Triton through TRITON_INTERPRET=1, set
by the shell script before anything imports triton; torch and ONNX Runtime on the CPU), so the
script is exercised where no GPU is (tests/test_gpu_acceptance.py).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hamedge.fsutil import write_text  # noqa: E402
from hamedge.compare import PROB_TOL  # noqa: E402

# Float64-reference tolerances (max absolute difference) of the refined heatmaps in (0, 1):
# fp32 arithmetic, amplified by the sigmoid's gain (100) near the centre, stays far under 1e-3;
# an fp16 output is rounded to 2^-11 near 1; a uint8 output is within one step of 255 * value.
REFINE_TOL = {"float32": 1e-3, "float16": 1e-3, "uint8": 1.0}
# Network outputs against the float64 forward: fp32 at the project's stated fp32 tolerance
# (PROB_TOL, the export's ONNX-vs-torch bound); fp16 arithmetic (11-bit mantissa) through ~20
# layers lands near 1e-3 on probabilities, so 1e-2. Raw maps relative to their largest value.
NET_TOL = {"fp32": {"prob": PROB_TOL, "map_rel": 1e-4}, "fp16": {"prob": 1e-2, "map_rel": 2e-2}}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Clock:
    """Median milliseconds of fn(i) (i rotates the inputs): CUDA events on a GPU, the host clock
    (after the work is done) on the CPU."""

    def __init__(self, cuda: bool, repeats: int, warmup: int) -> None:
        self.cuda, self.repeats, self.warmup = cuda, repeats, warmup

    def __call__(self, fn) -> dict:
        for i in range(self.warmup):
            fn(i)
        times = []
        if self.cuda:
            torch.cuda.synchronize()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(self.repeats)]
            for i, (start, stop) in enumerate(events):
                start.record()
                fn(i)
                stop.record()
            torch.cuda.synchronize()
            times = [start.elapsed_time(stop) for start, stop in events]
        else:
            for i in range(self.repeats):
                t0 = time.perf_counter()
                fn(i)
                times.append((time.perf_counter() - t0) * 1e3)
        q1, median, q3 = np.percentile(times, [25, 50, 75])
        return {"median_ms": float(median), "iqr_ms": float(q3 - q1), "repeats": len(times)}


def host_clock(fn, repeats: int, warmup: int) -> dict:
    """For calls that return host data (they synchronise themselves): the host clock."""
    return Clock(False, repeats, warmup)(fn)


def poison(shape, dtype, device) -> None:
    """Leave NaN in the caching allocator's next block of this size, so an output allocated by the
    code under test starts as NaN and an element it never writes is caught."""
    if device.type == "cuda" and dtype.is_floating_point:
        block = torch.full(shape, float("nan"), dtype=dtype, device=device)
        del block


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def max_abs(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))))


def refine_f64(maps: np.ndarray, H: int, W: int, gain: float = 100.0, center: float = 0.4,
               zero_range: float = 1e-5) -> np.ndarray:
    """The refinement in float64, written out from its definition (ARCHITECTURE.md): bilinear
    upsampling with align_corners in the a + f * (b - a) form (a constant map stays exactly
    constant, so its range is exactly zero), min-max over the upsampled map, sigmoid."""
    m = np.asarray(maps, np.float64)

    def axis(n_in: int, n_out: int):
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    x0, x1, fx = axis(m.shape[-1], W)
    y0, y1, fy = axis(m.shape[-2], H)
    cols = m[..., x0] + fx * (m[..., x1] - m[..., x0])  # (..., h, W)
    up = cols[..., y0, :] + fy[:, None] * (cols[..., y1, :] - cols[..., y0, :])
    lo = up.min(axis=(-2, -1), keepdims=True)
    span = up.max(axis=(-2, -1), keepdims=True) - lo
    span[span == 0] = zero_range
    return 1.0 / (1.0 + np.exp(-gain * ((up - lo) / span - center)))


def random_maps(rng, b: int, k: int, h: int, w: int) -> np.ndarray:
    """Raw CAM-like maps: non-negative, skewed, one all-zero map and one constant map (both have a
    zero range, the special case)."""
    maps = (rng.random((b, k, h, w), dtype=np.float32) ** 4) * 5
    maps[0, 0] = 0.0
    if b * k > 1:
        maps[-1, -1] = 2.5
    return maps


# -- sections ----------------------------------------------------------------------------------

def section_env(args, dev) -> dict:
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "commit": os.environ.get("HAMEDGE_COMMIT", "unknown"), "dry_run": args.dry_run,
           "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "device": str(dev)}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   memory_GiB=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    for name in ("triton", "onnxruntime", "onnx", "onnxsim", "safetensors"):
        spec = importlib.util.find_spec(name)
        if spec is None:
            env[name] = None
            continue
        try:
            env[name] = __import__(name).__version__
        except Exception as exc:  # a broken install is a finding, not a crash
            env[name] = f"import failed: {exc}"
    if env.get("onnxruntime") and not str(env["onnxruntime"]).startswith("import failed"):
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    return env


def section_ceilings(args, dev, clock) -> dict:
    nbytes = (1 << 30) if dev.type == "cuda" else (16 << 20)
    src = torch.rand(nbytes // 4, device=dev)
    dst = torch.full_like(src, float("nan"))
    copy = clock(lambda i: dst.copy_(src))
    if not torch.equal(dst, src):
        return {"status": "FAIL", "why": "the copy did not copy"}
    out = {"status": "ok", "copy_bytes": nbytes,
           "copy_GBps": 2 * nbytes / (copy["median_ms"] * 1e-3) / 1e9, "copy": copy}
    n = 8192 if dev.type == "cuda" else 256
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = [torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2)]
    b = torch.randn(n, n, device=dev, dtype=dtype)
    mm = clock(lambda i: a[i % 2] @ b)
    out.update(matmul=f"{n}x{n}x{n} {str(dtype).split('.')[-1]}", matmul_TFLOPs=2 * n**3 / (mm["median_ms"] * 1e-3) / 1e12,
               matmul_time=mm)
    return out


def section_triton(args, dev, clock, ceilings, budget) -> dict:
    from hamedge.ops.refine import refine_reference
    from hamedge.kernels.torch_op import refine_torch
    from hamedge.kernels.torch_refine import refine_maps_torch
    from hamedge.kernels.triton_refine import triton_refine

    rng = np.random.default_rng(int(time.time()))  # fresh inputs every run
    if args.dry_run:
        checks = [(1, 15, 8, 8, 32, 32), (2, 3, 5, 9, 33, 70), (1, 1, 1, 6, 9, 17)]
        timed = [(1, 2, 4, 4, 16, 16)]
        clock = Clock(False, 1, 0)  # the interpreter is slow: one run of each, to exercise the code
    else:
        checks = [(b, 15, lo, lo, 512, 512) for lo in (16, 32, 64) for b in (1, 8, 32)]
        checks += [(3, 2, 5, 9, 33, 70), (2, 7, 7, 7, 100, 100), (1, 1, 1, 6, 9, 17), (4, 15, 8, 8, 128, 128)]
        timed = [(b, 15, lo, lo, 512, 512) for lo in (16, 64) for b in (1, 8, 32)] + [(8, 8, 8, 8, 128, 128)]
    rows, failures = [], []
    torch_dtypes = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}
    for b, k, h, w, H, W in checks:
        if budget.left() < 30:
            failures.append("time budget: not every case was checked")
            break
        maps = random_maps(rng, b, k, h, w)
        ref64 = refine_f64(maps, H, W)
        ref32 = refine_reference(maps, (H, W))
        x = torch.from_numpy(maps).to(dev)
        row = {"case": [b, k, h, w, H, W]}
        for kind, dtype in torch_dtypes.items():
            poison((b, k, H, W), dtype, dev)
            got = triton_refine(x, H, W, out_dtype=dtype).cpu().numpy()
            unwritten = int((~np.isfinite(got.astype(np.float32))).sum())
            if kind == "uint8":
                err = max_abs(got, np.round(255 * ref64))
            else:
                err = max_abs(got, ref64)
            row[kind] = {"max_abs_vs_f64": err, "unwritten": unwritten,
                         "rel_vs_f64": rel_err(got, 255 * ref64 if kind == "uint8" else ref64)}
            if kind == "float32":
                row[kind]["max_abs_vs_numpy_ref"] = max_abs(got, ref32)
            if err > REFINE_TOL[kind] or unwritten:
                failures.append(f"{row['case']} {kind}: max abs {err:.3g} (tol {REFINE_TOL[kind]:g}), "
                                f"{unwritten} unwritten")
        # The torch custom op (what the torch backend calls) dispatches to the same kernel on CUDA.
        op = refine_torch(x, (H, W)).cpu().numpy()
        row["custom_op_max_abs_vs_f64"] = max_abs(op, ref64)
        if row["custom_op_max_abs_vs_f64"] > REFINE_TOL["float32"]:
            failures.append(f"{row['case']} custom op: max abs {row['custom_op_max_abs_vs_f64']:.3g}")
        rows.append(row)
    timing = []
    for b, k, h, w, H, W in timed:
        if budget.left() < 30:
            failures.append("time budget: not every size was timed")
            break
        xs = [torch.from_numpy(random_maps(rng, b, k, h, w)).to(dev) for _ in range(4)]
        out_bytes = b * k * H * W * 4
        floor_ms = (xs[0].numel() * 4 + out_bytes) / (ceilings["copy_GBps"] * 1e9) * 1e3
        t = {"case": [b, k, h, w, H, W], "out_bytes_fp32": out_bytes, "write_floor_fp32_ms": floor_ms,
             "unfused_torch": clock(lambda i: refine_maps_torch(xs[i % 4], (H, W))),
             "triton_fp32": clock(lambda i: triton_refine(xs[i % 4], H, W)),
             "triton_fp16": clock(lambda i: triton_refine(xs[i % 4], H, W, out_dtype=torch.float16)),
             "triton_uint8": clock(lambda i: triton_refine(xs[i % 4], H, W, out_dtype=torch.uint8)),
             "custom_op_fp32": clock(lambda i: refine_torch(xs[i % 4], (H, W)))}
        t["fp32_over_floor"] = t["triton_fp32"]["median_ms"] / floor_ms
        t["speedup_vs_unfused"] = t["unfused_torch"]["median_ms"] / t["triton_fp32"]["median_ms"]
        timing.append(t)
    return {"status": "FAIL" if any("tol" in f for f in failures) else "ok", "failures": failures,
            "checks": rows, "timing": timing, "tolerance": REFINE_TOL}


HARNESS_LINE = re.compile(r"^(ok|FAIL)\s+n=(\d+) (\d+)x(\d+) -> (\d+)x(\d+) max\|diff\|=(\S+) \(err (-?\d+)\)")


def parse_harness(text: str) -> list[dict]:
    """fused_refine_test's lines: 'ok   n=15 16x16 -> 512x512 max|diff|=1.2e-07 (err 0)'."""
    rows = []
    for line in text.splitlines():
        m = HARNESS_LINE.match(line.strip())
        if m:
            rows.append({"ok": m[1] == "ok", "n": int(m[2]), "low": [int(m[3]), int(m[4])],
                         "out": [int(m[5]), int(m[6])], "max_abs": float(m[7]), "cuda_error": int(m[8])})
    return rows


def section_cuda_kernel(args, dev, clock, ceilings, budget) -> dict:
    result: dict = {}
    if args.build_done:
        while not Path(args.build_done).exists() and budget.left() > 40:
            time.sleep(1)
    harness = Path(args.harness) if args.harness else None
    if harness and harness.is_file():  # run here, not beside the other timings
        try:
            proc = subprocess.run([str(harness)], capture_output=True, text=True, timeout=60)
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            rc, text = None, "timed out after 60 s"
        write_text(Path(args.out) / "cuda_harness.txt", text)
        lines = parse_harness(text)
        result["harness"] = {"exit_code": rc, "cases": lines,
                             "status": "ok" if rc == 0 and lines and all(r["ok"] for r in lines) else "FAIL"}
    else:
        result["harness"] = {"status": f"skipped: {args.harness_why or 'not built'}"}
    if not args.cuda_lib or not Path(args.cuda_lib).is_file():
        result["kernel"] = {"status": f"skipped: {args.harness_why or 'no shared library built'}"}
    elif dev.type != "cuda":
        result["kernel"] = {"status": "skipped: no CUDA device"}
    else:
        result["kernel"] = _cuda_kernel_checks(args.cuda_lib, dev, clock, ceilings, budget)
    statuses = [result["harness"]["status"], result["kernel"]["status"]]
    result["status"] = ("FAIL" if "FAIL" in statuses else "ok" if "ok" in statuses
                        else statuses[0])
    return result


def _cuda_kernel_checks(lib_path: str, dev, clock, ceilings, budget) -> dict:
    lib = ctypes.CDLL(lib_path)
    lib.hamedge_fused_refine_workspace.restype = ctypes.c_size_t
    lib.hamedge_fused_refine_workspace.argtypes = [ctypes.c_int]
    lib.hamedge_fused_refine.restype = ctypes.c_int
    lib.hamedge_fused_refine.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                         ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                         ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                                         ctypes.c_void_p, ctypes.c_void_p]
    kinds = {"float32": (0, torch.float32), "float16": (1, torch.float16), "uint8": (2, torch.uint8)}

    def launch(x, out, kind, n, h, w, H, W, ws):
        code = lib.hamedge_fused_refine(x.data_ptr(), 0, out.data_ptr(), kinds[kind][0], n, h, w, H, W,
                                        100.0, 0.4, 1e-5, ws.data_ptr(),
                                        torch.cuda.current_stream(dev).cuda_stream)
        if code != 0:
            raise RuntimeError(f"hamedge_fused_refine returned cudaError {code}")

    rng = np.random.default_rng(int(time.time()) + 1)
    rows, failures, timing = [], [], []
    for b, k, h, w, H, W in [(1, 15, 16, 16, 512, 512), (32, 15, 64, 64, 512, 512), (3, 2, 5, 9, 33, 70)]:
        maps = random_maps(rng, b, k, h, w)
        ref64 = refine_f64(maps, H, W)
        x = torch.from_numpy(maps).to(dev)
        n = b * k
        ws = torch.empty(int(lib.hamedge_fused_refine_workspace(n)), dtype=torch.uint8, device=dev)
        row = {"case": [b, k, h, w, H, W]}
        for kind, (_, dtype) in kinds.items():
            out = torch.full((b, k, H, W), float("nan") if dtype.is_floating_point else 0, dtype=dtype,
                             device=dev)
            launch(x, out, kind, n, h, w, H, W, ws)
            torch.cuda.synchronize()
            got = out.cpu().numpy()
            unwritten = int((~np.isfinite(got.astype(np.float32))).sum())
            err = max_abs(got, np.round(255 * ref64) if kind == "uint8" else ref64)
            row[kind] = {"max_abs_vs_f64": err, "unwritten": unwritten}
            if err > REFINE_TOL[kind] or unwritten:
                failures.append(f"{row['case']} {kind}: max abs {err:.3g}, {unwritten} unwritten")
        rows.append(row)
        if H == 512 and budget.left() > 30:
            xs = [torch.from_numpy(random_maps(rng, b, k, h, w)).to(dev) for _ in range(4)]
            out = torch.empty((b, k, H, W), dtype=torch.float32, device=dev)
            floor_ms = (x.numel() * 4 + out.numel() * 4) / (ceilings["copy_GBps"] * 1e9) * 1e3
            t = clock(lambda i: launch(xs[i % 4], out, "float32", n, h, w, H, W, ws))
            timing.append({"case": row["case"], "cuda_fp32": t, "write_floor_fp32_ms": floor_ms,
                           "fp32_over_floor": t["median_ms"] / floor_ms})
    return {"status": "FAIL" if failures else "ok", "failures": failures, "checks": rows, "timing": timing}


def _export_default(work: Path):
    from hamedge.bundle import Bundle
    from hamedge.export import ExportOptions, export_bundle

    target = work / "default.hamedge"
    export_bundle(None, ExportOptions(out=target, force=True, parity_images=2,
                                      simplify=importlib.util.find_spec("onnxsim") is not None),
                  log=lambda *_: None)
    return Bundle.open(target)


def _f64_reference(bundle, batch: np.ndarray) -> dict:
    """The same weights' forward in float64 on the CPU."""
    from hamedge.model.checkpoint import load_model

    model = load_model(bundle.weights_path, device="cpu").double().eval()
    x = torch.from_numpy(batch).double()
    if x.shape[1] != model.spec.in_channels:
        x = x.expand(-1, model.spec.in_channels, -1, -1)
    with torch.no_grad():
        out = model(x, refine=False)
    return {"class_probs": torch.sigmoid(out.class_logits).numpy(),
            "anomaly_prob": torch.sigmoid(out.anomaly_logit).numpy(),
            "attention_maps": torch.cat((out.anomaly_cam, out.class_cams), dim=1).numpy()}


def _parity(raw, ref: dict, tol: dict) -> dict:
    prob = max(max_abs(raw.class_probs, ref["class_probs"]), max_abs(raw.anomaly_prob, ref["anomaly_prob"]))
    scale = max(1.0, float(np.abs(ref["attention_maps"]).max()))
    map_rel = max_abs(raw.attention_maps, ref["attention_maps"]) / scale
    finite = bool(np.isfinite(raw.class_probs).all() and np.isfinite(raw.attention_maps).all())
    ok = finite and prob <= tol["prob"] and map_rel <= tol["map_rel"]
    return {"max_prob_diff": prob, "max_map_rel_diff": map_rel, "finite": finite, "tolerance": tol,
            "status": "ok" if ok else "FAIL"}


def _backend_figures(backend, bundle, dev, clock, batches, budget, repeats) -> dict:
    """Parity on fresh inputs, then end-to-end and (torch) model-only throughput per batch."""
    rng = np.random.default_rng(int(time.time()) + 2)
    shape = backend.input_shape
    check = rng.standard_normal((4, *shape)).astype(np.float32)
    res = {"parity": _parity(backend.run(check), _f64_reference(bundle, check),
                             NET_TOL[backend.precision]), "batches": {}}
    for batch in batches:
        if budget.left() < 20:
            res["batches"][str(batch)] = "skipped: time budget"
            continue
        xs = [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(3)]
        e2e = host_clock(lambda i: backend.run(xs[i % 3]), repeats, 2)
        row = {"end_to_end": e2e, "end_to_end_images_per_s": batch / e2e["median_ms"] * 1e3}
        model = getattr(backend, "model", None)
        if model is not None:  # the torch backend: the network alone on device tensors
            dts = [torch.from_numpy(x).to(dev, backend.dtype) for x in xs]
            if dts[0].shape[1] != backend.spec.in_channels:
                dts = [d.expand(-1, backend.spec.in_channels, -1, -1).contiguous() for d in dts]
            with torch.inference_mode():
                only = clock(lambda i: model(dts[i % 3], refine=False))
            row.update(model_only=only, model_only_images_per_s=batch / only["median_ms"] * 1e3)
        res["batches"][str(batch)] = row
    res["status"] = res["parity"]["status"]
    return res


def section_torch(args, dev, clock, bundle, budget) -> dict:
    from hamedge.runtime import open_backend

    precisions = ["fp32", "fp16"] if dev.type == "cuda" else ["fp32"]
    batches = (1, 8, 32, 128) if not args.dry_run else (2,)
    out: dict = {}
    for precision in precisions:
        with open_backend(bundle, "torch", precision, dev.type) as backend:
            out[precision] = _backend_figures(backend, bundle, dev, clock, batches, budget, args.repeats)
    out["resnet50_s8_512"] = _published_config(args, dev, clock, precisions, budget)
    out["status"] = "FAIL" if any(v.get("status") == "FAIL" for v in out.values()) else "ok"
    return out


def _published_config(args, dev, clock, precisions, budget) -> dict:
    """Model-only throughput of resnet50/stride-8/dilated/512 (random weights; speed only). In a
    dry run a resnet18/stride-16/64 stands in, to exercise the code on the CPU."""
    from hamedge.model.network import random_model
    from hamedge.spec import ModelSpec

    if budget.left() < 60:
        return {"status": "skipped: time budget"}
    if args.dry_run:
        spec, batches = ModelSpec(arch="resnet18", output_stride=16, input_size=32), (2,)
    else:
        spec = ModelSpec(arch="resnet50", output_stride=8, dilation=True, keep_maxpool=True, input_size=512)
        batches = (1, 8, 32)
    res = {"spec": f"{spec.arch}/stride {spec.output_stride}/{spec.input_size}", "status": "ok"}
    rng = np.random.default_rng(int(time.time()) + 3)
    for precision in precisions:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        model = random_model(spec).to(dev, dtype)
        for batch in batches:
            if budget.left() < 20:
                res[f"{precision}/{batch}"] = "skipped: time budget"
                continue
            xs = [torch.from_numpy(rng.standard_normal((batch, 3, spec.input_size, spec.input_size),
                                                       dtype=np.float32)).to(dev, dtype) for _ in range(3)]
            with torch.inference_mode():
                t = clock(lambda i: model(xs[i % 3], refine=False))
            res[f"{precision}/{batch}"] = {"model_only": t, "images_per_s": batch / t["median_ms"] * 1e3}
        del model
    return res


def section_onnxruntime(args, dev, clock, bundle, budget) -> dict:
    from hamedge.runtime import open_backend

    try:
        import onnxruntime
    except ImportError as exc:
        return {"status": f"skipped: onnxruntime does not import ({exc})"}
    providers = onnxruntime.get_available_providers()
    if args.dry_run:
        device = "cpu"  # the dry run exercises the same code on the CPU provider
    elif "CUDAExecutionProvider" in providers:
        device = "cuda"
    else:
        return {"status": f"skipped: this onnxruntime has no CUDA provider ({', '.join(providers)})"}
    batches = (1, 8, 32, 128) if not args.dry_run else (2,)
    with open_backend(bundle, "onnxruntime", "fp32", device) as backend:
        res = _backend_figures(backend, bundle, dev, clock, batches, budget, args.repeats)
        res["providers"] = list(getattr(backend, "providers", []))
        if device == "cuda" and res["providers"][:1] != ["CUDAExecutionProvider"]:
            res["status"] = "FAIL"
            res["why"] = f"the session fell back to {res['providers']}"
    return res


# -- report --------------------------------------------------------------------------------------

def table(results: dict) -> str:
    env = results["env"]
    lines = [f"gpu_acceptance {'(DRY RUN on CPU) ' if env['dry_run'] else ''}{env.get('gpu', env['device'])} "
             f"torch {env['torch']} triton {env.get('triton')} onnxruntime {env.get('onnxruntime')} "
             f"commit {env['commit']} {env['date']}"]
    c = results.get("ceilings", {})
    if "copy_GBps" in c:
        lines.append(f"ceilings: copy {c['copy_GBps']:.0f} GB/s (read+write), matmul {c['matmul']} "
                     f"{c['matmul_TFLOPs']:.1f} TFLOP/s")
    lines.append("| section | status | figure |")
    lines.append("| --- | --- | --- |")
    for name in ("triton", "cuda_kernel", "torch", "onnxruntime"):
        sec = results.get(name, {})
        lines.append(f"| {name} | {sec.get('status', 'missing')} | {_figure(name, sec)} |")
    return "\n".join(lines)


def _figure(name: str, sec: dict) -> str:
    try:
        if name == "triton" and sec.get("checks"):
            worst = max(r["float32"]["max_abs_vs_f64"] for r in sec["checks"])
            text = f"fp32 max abs vs f64 {worst:.1e}"
            if sec.get("timing"):
                t = sec["timing"][-1] if len(sec["timing"]) == 1 else max(
                    sec["timing"], key=lambda r: r["out_bytes_fp32"])
                text += (f"; {t['case']}: {t['triton_fp32']['median_ms']:.3f} ms, "
                         f"{t['fp32_over_floor']:.2f}x floor, {t['speedup_vs_unfused']:.1f}x unfused")
            return text
        if name == "cuda_kernel":
            k = sec.get("kernel", {})
            text = f"harness {sec.get('harness', {}).get('status')}"
            if k.get("timing"):
                t = k["timing"][-1]
                text += f"; {t['case']}: {t['cuda_fp32']['median_ms']:.3f} ms, {t['fp32_over_floor']:.2f}x floor"
            return text
        if name in ("torch", "onnxruntime"):
            parts = []
            for precision, res in ([(p, sec[p]) for p in ("fp32", "fp16") if p in sec] if name == "torch"
                                   else [("fp32", sec)]):
                if "parity" not in res:
                    continue
                best = max((v.get("end_to_end_images_per_s", 0) for v in res["batches"].values()
                            if isinstance(v, dict)), default=0)
                parts.append(f"{precision} prob diff {res['parity']['max_prob_diff']:.1e} "
                             f"({res['parity']['status']}), best e2e {best:.0f} img/s")
            return "; ".join(parts) or sec.get("status", "")
    except (KeyError, ValueError, TypeError) as exc:
        return f"(no figure: {exc})"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for this driver")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--cuda-lib", default=None)
    parser.add_argument("--harness", default=None, help="the built fused_refine_test executable")
    parser.add_argument("--build-done", default=None, help="file whose existence says the builds finished")
    parser.add_argument("--harness-why", default=None, help="why the CUDA code was not built")
    args = parser.parse_args()
    if args.dry_run:  # the interpreter evaluates exp(-z) in numpy: inf for z << 0, then 1/inf = 0
        warnings.filterwarnings("ignore", "overflow encountered in exp")
    budget = Budget(args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        dev = torch.device("cpu")
    elif torch.cuda.is_available():
        dev = torch.device("cuda")
    else:
        print("no CUDA device: run with --dry-run for the CPU check of this script", file=sys.stderr)
        return 2
    if args.repeats is None:
        args.repeats = 2 if args.dry_run else 50
    clock = Clock(dev.type == "cuda", args.repeats, 1 if args.dry_run else 5)
    torch.set_grad_enabled(False)
    results: dict = {"env": section_env(args, dev)}

    def run(name, fn, *a):
        t0 = time.monotonic()
        try:
            results[name] = fn(*a)
        except Exception as exc:
            results[name] = {"status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                             "traceback": traceback.format_exc()[-3000:]}
        results[name]["seconds"] = round(time.monotonic() - t0, 1)
        write_text(out / "results.json", json.dumps(results, indent=1, default=str))
        print(f"[{name}] {results[name]['status']} in {results[name]['seconds']} s", flush=True)

    run("ceilings", section_ceilings, args, dev, clock)
    ceilings = results["ceilings"] if "copy_GBps" in results["ceilings"] else {"copy_GBps": float("nan")}
    if importlib.util.find_spec("triton") is None:
        results["triton"] = {"status": "skipped: triton is not installed"}
    else:
        run("triton", section_triton, args, dev, clock, ceilings, budget)
    with tempfile.TemporaryDirectory(prefix="hamedge-gpu-") as work:
        try:
            bundle = _export_default(Path(work))
        except Exception as exc:
            bundle = None
            why = f"error: the default model did not export: {type(exc).__name__}: {exc}"
            results["torch"] = {"status": why}
            results["onnxruntime"] = {"status": why}
        if bundle is not None:
            run("torch", section_torch, args, dev, clock, bundle, budget)
            run("onnxruntime", section_onnxruntime, args, dev, clock, bundle, budget)
    run("cuda_kernel", section_cuda_kernel, args, dev, clock, ceilings, budget)
    results["seconds"] = round(args.budget - budget.left(), 1)
    write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    text = table(results)
    write_text(out / "table.md", text + "\n")
    print(text)
    statuses = [str(results[k].get("status", "")) for k in ("triton", "cuda_kernel", "torch", "onnxruntime")
                if k in results]
    return 1 if any(s == "FAIL" or s.startswith("error") for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
