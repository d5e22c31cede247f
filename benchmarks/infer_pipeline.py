"""End-to-end `hamedge infer` throughput vs the backend's pure-model throughput, and batch-1
latency (file in -> probabilities + heatmap out), on folders of 512 and 1024 px PNGs.

    python benchmarks/infer_pipeline.py [--images 24] [--batch 4] [--backend onnxruntime]

Model: the packaged demo model when present, else a random-weight resnet18 / stride 32 / 512 px
HAM (same cost). Writes benchmarks/results/infer_cpu.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, ROOT, record_line, run_record, time_calls


NOTES = """Notes: on a CPU the readers, the heatmap writer and the model share the same cores, so
the pipeline cannot hide reading and writing the way it does next to a GPU; the 90% target is a
GPU-machine target. With random weights almost every class is 'positive' (12-15 overlays per image
at the image's size), far more heatmap writing than a trained model causes; `--heatmaps none` shows
the reading/preprocessing overhead alone. Short folders include the pipeline's ramp-up."""


def bundle_for_benchmark(work: Path):
    from hamedge.api import DEFAULT_CHECKPOINT, resolve_bundle

    if DEFAULT_CHECKPOINT.is_file():
        return resolve_bundle(None), "packaged demo model"
    import torch

    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.network import build_model
    from hamedge.spec import ModelSpec

    spec = ModelSpec(arch="resnet18", output_stride=32, input_size=512)
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(spec).eval(), spec, work / "bench.safetensors")
    return resolve_bundle(ckpt), "random-weight resnet18/stride 32/512 px"


def make_folder(root: Path, size: int, count: int) -> Path:
    import cv2

    src = sorted((ROOT.parent / "shared" / "data" / "nih-samples" / "images").glob("*.png"))
    folder = root / f"png{size}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gray = cv2.imread(str(src[i % len(src)]), cv2.IMREAD_GRAYSCALE)
        gray = cv2.resize(np.roll(gray, 7 * i, axis=1), (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"x{i:04d}.png"), gray)
    return folder


def pure_model(backend, batch: int, seconds: float = 8.0) -> float:
    x = np.random.default_rng(0).standard_normal((batch, *backend.input_shape)).astype(np.float32)
    times = time_calls(lambda: backend.run(x), seconds, warmup=1)
    return batch * len(times) / float(times.sum())


def end_to_end(backend, bundle, folder: Path, out: Path, batch: int, heatmaps: str) -> float:
    from hamedge.pipeline import InferOptions, model_id, run_inference

    summary = run_inference([folder], backend, out, InferOptions(batch=batch, workers=2,
                                                                 heatmaps=heatmaps, overwrite=True),
                            model_id(bundle))
    return summary.images_per_second


def latency(backend, files: list[Path], runs: int) -> dict:
    from hamedge.io import read_image
    from hamedge.pipeline import predictions_from_outputs
    from hamedge.preprocess import preprocess

    times = []
    for i in range(runs + 2):
        path = files[i % len(files)]
        start = time.perf_counter()
        image = read_image(path)
        raw = backend.run(preprocess(image, backend.spec, backend.input_channels)[None])
        pred = predictions_from_outputs(raw, backend.spec, [image.shape[:2]], [str(path)])[0]
        pred.heatmap("anomaly", size="image")
        pred.boxes("anomaly")
        if i >= 2:  # two warm-up runs
            times.append((time.perf_counter() - start) * 1000)
    t = np.asarray(times)
    return {"runs": runs, "p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--latency-runs", type=int, default=30)
    args = ap.parse_args()

    from hamedge.runtime import open_backend

    with tempfile.TemporaryDirectory(prefix="hamedge-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("HAMEDGE_CACHE", str(work / "cache"))
        bundle, model_desc = bundle_for_benchmark(work)
        backend = open_backend(bundle, args.backend, args.precision)
        rows = []
        pure = pure_model(backend, args.batch)
        for size in (512, 1024):
            folder = make_folder(work, size, args.images)
            for heatmaps in ("none", "overlay"):
                e2e = end_to_end(backend, bundle, folder, work / f"out{size}{heatmaps}", args.batch,
                                 heatmaps)
                rows.append({"image_px": size, "heatmaps": heatmaps, "batch": args.batch,
                             "e2e_images_per_s": round(e2e, 2),
                             "pure_model_images_per_s": round(pure, 2),
                             "ratio": round(e2e / pure, 3)})
                print(rows[-1], flush=True)
        lat = {size: latency(backend, sorted(make_folder(work, size, 4).glob("*.png")),
                             args.latency_runs) for size in (512, 1024)}
        print(lat, flush=True)
        backend.close()
    result = {**run_record(), "backend": f"{args.backend} {args.precision}", "model": model_desc,
              "images_per_folder": args.images, "throughput": rows,
              "latency_batch1": {str(k): v for k, v in lat.items()}}
    out = RESULTS
    from hamedge.fsutil import write_text

    write_text(out / "infer_cpu.json", json.dumps(result, indent=2) + "\n")
    lines = [f"# hamedge infer: end-to-end vs pure model ({result['date']})", "",
             f"- measured {record_line(result)}",
             f"- backend: {result['backend']}; model: {model_desc}",
             f"- {args.images} PNGs per folder, batch {args.batch}, 2 reader threads", "",
             "| image px | heatmaps | e2e img/s | pure model img/s | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r['image_px']} | {r['heatmaps']} | {r['e2e_images_per_s']} | "
              f"{r['pure_model_images_per_s']} | {r['ratio']:.0%} |" for r in rows]
    lines += ["", "Batch-1 latency, file in -> probabilities + anomaly heatmap at image size + boxes:",
              "", "| image px | p50 ms | p90 ms | p99 ms | runs |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['p50_ms']:.1f} | {v['p90_ms']:.1f} | {v['p99_ms']:.1f} | {v['runs']} |"
              for k, v in lat.items()]
    lines += ["", NOTES]
    write_text(out / "infer_cpu.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
