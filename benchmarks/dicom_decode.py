"""DICOM decoding speed per transfer syntax, and peak memory of `hamedge infer` folder runs.

    python benchmarks/dicom_decode.py [--reps 3] [--files 1000] [--heatmaps overlay]

1. images/s of `hamedge.io.read_image` (header checks, first-frame decode, modality/VOI
   transforms: everything a reader thread does before preprocessing) on the real NIH X-rays from
   ../shared/data/nih-samples, stored as 12-bit DX DICOM (8-bit for JPEG baseline) in every
   syntax our encoders write, at 1024 px and upscaled to 2048 px; PNG of the same image as the
   reference row.
2. peak RSS (ru_maxrss of the child) of `hamedge infer` on folders of 100 and --files 1,000
   files (1024 px PNG and DICOM, a mix), packaged demo model, default options: memory must not
   grow with the folder.

Writes benchmarks/results/dicom_decode_cpu.{md,json} with machine, date, commit and load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the one DICOM encoder (tests/dicom_encodings.py)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = "?"
    return f"{name}, {os.cpu_count()} cores"


def decode_speed(work: Path, reps: int) -> list[dict]:
    from PIL import Image

    import dicom_encodings
    from hamedge.io import read_image

    sources = sorted((ROOT.parent / "shared" / "data" / "nih-samples" / "images").glob("*.png"))
    if not sources:
        sys.exit("no NIH X-rays in ../shared/data/nih-samples/images")
    rows = []
    for side in (1024, 2048):
        images = [np.asarray(Image.open(p).convert("L").resize((side, side), Image.BICUBIC)) for p in sources]
        pngs = []
        for i, img in enumerate(images):
            path = work / f"{side}_{i}.png"
            Image.fromarray(img).save(path)
            pngs.append(path)
        cases = [("PNG 8-bit (reference)", "png", pngs)]
        for name, (syntax, _) in dicom_encodings.ENCODINGS.items():
            bits = 8 if name == "jpeg_baseline" else 12
            paths = []
            for i, img in enumerate(images):
                pixels = img if bits == 8 else img.astype(np.uint16) * 16 + (i % 16)
                paths.append(dicom_encodings.write(pixels, bits, name, work / f"{side}_{name}_{i}.dcm"))
            cases.append((f"{syntax.name} ({bits}-bit)", name, paths))
        for label, name, paths in cases:
            read_image(paths[0])  # warm-up (imports, plugin set-up)
            start = time.perf_counter()
            for _ in range(reps):
                for path in paths:
                    read_image(path)
            seconds = time.perf_counter() - start
            count = reps * len(paths)
            rows.append({"side": side, "syntax": label, "encoding": name, "images_per_s": count / seconds,
                         "ms_per_image": 1000 * seconds / count,
                         "mean_file_kb": sum(p.stat().st_size for p in paths) / len(paths) / 1024})
            print(f"{side:5d} {label:62s} {count / seconds:7.1f} img/s", flush=True)
    return rows


def folder_rss(work: Path, counts: list[int], heatmaps: str) -> list[dict]:
    from PIL import Image

    import dicom_encodings

    sources = sorted((ROOT.parent / "shared" / "data" / "nih-samples" / "images").glob("*.png"))
    dcm = dicom_encodings.write(np.asarray(Image.open(sources[0]).convert("L")).astype(np.uint16) * 16, 12,
                                "jpeg_lossless", work / "seed.dcm")
    rows = []
    for count in counts:
        folder = work / f"folder{count}"
        folder.mkdir()
        for i in range(count):
            src = dcm if i % 4 == 3 else sources[i % len(sources)]
            os.link(src, folder / f"{i:05d}{src.suffix}")
        out = work / f"out{count}"
        code = ("import resource, sys; from hamedge.cli import run_app; rc = run_app(sys.argv[1:]); "
                "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", code, "infer", str(folder), "--out", str(out), "--quiet",
                              "--heatmaps", heatmaps],
                             capture_output=True, text=True, cwd=work)
        seconds = time.perf_counter() - start
        rss = int(next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("MAXRSS")))
        results = (out / "results.csv").read_text().splitlines()
        rows.append({"files": count, "exit": run.returncode, "rows": len(results) - 1,
                     "peak_rss_mib": rss / 1024, "seconds": seconds, "stderr": run.stderr.strip()[:300]})
        print(f"{count} files: exit {run.returncode}, peak RSS {rss / 1024:.0f} MiB, {seconds:.0f} s", flush=True)
        shutil.rmtree(folder)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--heatmaps", default="overlay", help="infer's --heatmaps for the folder runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        speed = decode_speed(Path(tmp), args.reps)
        rss = folder_rss(Path(tmp), [100, args.files], args.heatmaps)
    load_after = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    result = {"machine": machine(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit, "load_1min_before_after": [load_before[0], load_after[0]],
              "python": sys.version.split()[0], "decode": speed, "folder_rss": rss}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dicom_decode_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    png = {r["side"]: r["images_per_s"] for r in speed if r["encoding"] == "png"}
    lines = ["# DICOM decoding per transfer syntax, and folder-run peak memory", "",
             f"- machine: {result['machine']}", f"- date: {result['date']}", f"- commit: {commit}",
             f"- load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}"
             " (a shared machine: other jobs ran beside this one; compare rows as ratios)", "",
             "`hamedge.io.read_image` (header checks, first-frame decode, transforms), one thread, "
             f"{args.reps} passes over the 3 NIH X-rays:", "",
             "| side | syntax | images/s | ms/image | vs PNG | file KB |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in speed:
        lines.append(f"| {r['side']} | {r['syntax']} | {r['images_per_s']:.1f} | {r['ms_per_image']:.1f} | "
                     f"{r['images_per_s'] / png[r['side']]:.2f}x | {r['mean_file_kb']:.0f} |")
    lines += ["", f"`hamedge infer FOLDER --heatmaps {args.heatmaps}` (demo model, batch 8, 2 readers; "
              "3 in 4 files PNG, 1 in 4 JPEG Lossless DICOM, 1024 px), peak RSS of the process:", "",
              "| files | exit | rows | peak RSS MiB | seconds |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in rss:
        lines.append(f"| {r['files']} | {r['exit']} | {r['rows']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |")
    (args.out / "dicom_decode_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
