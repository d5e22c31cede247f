"""Benchmark of `hamedge export --int8` and of the exported graphs on this CPU.

Measures, in one run on one machine:
1. wall time of `hamedge export --int8` (a subprocess, as a user runs it) on the default model;
2. ONNX Runtime CPU throughput of the fp32 graph and both INT8 targets (tensorrt S8S8, cpu U8S8)
   against the PyTorch eager forward of the same model, at batch 1 and 8, same inputs.
Writes benchmarks/results/export_cpu.{json,md} (machine, date, commit). When the packaged demo
model is missing, a freshly initialised model of the demo's shape stands in (and says so): speed
does not depend on the weights, accuracy deltas do.

    .venv/bin/python benchmarks/export_bench.py [--checkpoint C] [--seconds 6] [--skip-export]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, ROOT, load_average, record_line, run_record, time_calls

from hamedge.fsutil import write_text  # noqa: E402


def timed(fn, batch: np.ndarray, seconds: float) -> dict:
    per_image = time_calls(lambda: fn(batch), seconds) / batch.shape[0] * 1000
    return {"iterations": len(per_image), "ms_per_image_median": float(np.median(per_image)),
            "ms_per_image_mean": float(per_image.mean()),
            "images_per_s": float(1000 / np.median(per_image))}


def stand_in_checkpoint(path: Path) -> Path:
    import torch

    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.network import HAM
    from hamedge.spec import ModelSpec
    from hamedge.synth import SYNTH_CLASSES

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", output_stride=16, input_size=256, class_names=SYNTH_CLASSES,
                     description="benchmark stand-in (random weights, demo model's shape)")
    save_checkpoint(HAM(spec).eval(), spec, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=6.0, help="timing per measurement")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--extra-args", default="", help="more `hamedge export` arguments")
    ap.add_argument("--label", default="", help="what the checkpoint is, for the report")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from hamedge.bundle import Bundle
    from hamedge.model.checkpoint import DEFAULT_MODEL, load_model

    load_start = load_average()  # other work on the machine skews every number
    work = Path(tempfile.mkdtemp(prefix="hamedge-export-bench-"))
    ckpt = args.checkpoint
    note = args.label or (str(ckpt) if ckpt else "")
    if ckpt is None:
        if DEFAULT_MODEL.is_file():
            ckpt, note = DEFAULT_MODEL, "packaged demo model"
        else:
            ckpt = stand_in_checkpoint(work / "stand_in.safetensors")
            note = "stand-in: demo model missing, random weights of its shape (resnet18/16/256)"
    bundle_dir = work / "model.hamedge"
    cmd = [sys.executable, "-c", "from hamedge.cli import main; main()", "export", str(ckpt),
           "--out", str(bundle_dir), "--int8", *args.extra_args.split()]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    export_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"export failed ({proc.returncode}):\n{proc.stderr}")
    print(proc.stderr)
    bundle = Bundle.open(bundle_dir)
    spec = bundle.spec

    model = load_model(ckpt)
    runs = {}
    rng = np.random.default_rng(0)
    sessions = {name: ort.InferenceSession(str(bundle_dir / f), providers=["CPUExecutionProvider"])
                for name, f in (("onnxruntime fp32", "model.onnx"),
                                ("onnxruntime int8 S8S8 (target tensorrt)", "model.int8.onnx"),
                                ("onnxruntime int8 U8S8 (target cpu)", "model.int8.cpu.onnx"))}
    for batch_size in (1, 8):
        x1 = rng.normal(size=(batch_size, bundle.graph.input_channels, spec.input_size,
                              spec.input_size)).astype(np.float32)
        x3 = torch.from_numpy(np.repeat(x1, spec.in_channels, axis=1))

        def torch_eager(_batch, x3=x3):
            with torch.inference_mode():
                model(x3, refine=False)

        results = {"torch eager fp32": timed(torch_eager, x1, args.seconds)}
        for name, sess in sessions.items():
            results[name] = timed(lambda b, s=sess: s.run(None, {"image": b}), x1, args.seconds)
        runs[f"batch {batch_size}"] = results
        for name, r in results.items():
            print(f"batch {batch_size:>2}  {name:<40} {r['ms_per_image_median']:8.1f} ms/image")

    cal = bundle.calibration or {}
    acc = cal.get("accuracy") or {}
    report = {
        "benchmark": "export_cpu", **run_record(), "model": note,
        "spec": {"arch": spec.arch, "output_stride": spec.output_stride, "input_size": spec.input_size,
                 "classes": spec.num_classes},
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": load_start,
        "export_int8_seconds": round(export_s, 1),
        "export_command": "hamedge export CKPT --out DIR --int8 " + args.extra_args,
        "int8_guard": {target: {k: acc[target].get(k) for k in ("mean_auc_delta", "anomaly_auc_delta",
                                                           "mean_tiou@0.3_delta", "passed")}
                       | {"heatmap_mean_iou": acc[target]["heatmap_agreement"]["mean_iou"]}
                       for target in acc},
        "excluded_nodes": cal.get("excluded_nodes"),
        "throughput": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "export_cpu.json", json.dumps(report, indent=2) + "\n")
    lines = [f"# `hamedge export --int8` on CPU ({report['date']}, commit {report['commit']})", "",
             f"Measured {record_line(report)} Load average {load_start} at the start; CPU flags "
             f"{', '.join(report['machine']['cpu_flags']) or 'none found'}; torch "
             f"{torch.__version__}, onnxruntime {ort.__version__}.",
             f"Model: {spec.arch}, stride {spec.output_stride}, {spec.input_size} px ({note}).", "",
             f"Export with `--int8` (calibration + both Q/DQ targets + accuracy guard): "
             f"**{export_s:.1f} s** wall.", "",
             "| batch | runner | ms / image (median) | images / s | vs torch eager |",
             "| --- | --- | ---: | ---: | ---: |"]
    for batch_name, results in runs.items():
        base = results["torch eager fp32"]["ms_per_image_median"]
        for name, r in results.items():
            lines.append(f"| {batch_name.split()[1]} | {name} | {r['ms_per_image_median']:.1f} | "
                         f"{r['images_per_s']:.1f} | {base / r['ms_per_image_median']:.2f}x |")
    lines += ["", "INT8 guard on the held-out set (INT8 minus fp32):", "",
              "| target | mean AUC | anomaly AUC | T(IoU=0.3) | heatmap IoU vs fp32 | passed |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    for target, g in report["int8_guard"].items():
        fmt = lambda v: "n/a" if v is None else f"{v:+.4f}"  # noqa: E731
        lines.append(f"| {target} | {fmt(g['mean_auc_delta'])} | {fmt(g['anomaly_auc_delta'])} | "
                     f"{fmt(g['mean_tiou@0.3_delta'])} | {g['heatmap_mean_iou'] or 0:.3f} | "
                     f"{g['passed']} |")
    lines += ["", f"Layers kept in float by the guard: {len(cal.get('excluded_nodes') or [])}.",
              "", "Command: `.venv/bin/python benchmarks/export_bench.py`", ""]
    write_text(args.out / "export_cpu.md", "\n".join(lines))
    print(f"wrote {args.out / 'export_cpu.md'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
