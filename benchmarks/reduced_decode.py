"""Decode cost per image, full against `--reduced-decode`, for each format that reduces.

    .venv/bin/python benchmarks/reduced_decode.py [--rounds 5]

The three real NIH X-rays (1024 px, 8-bit) written as PNG, JPEG (quality 95), JPEG 2000 files
(Pillow: lossless; lossy at 20:1) and DICOM JPEG 2000 (lossless 8 and 12 bit, lossy 8 bit).
Each is read with `hamedge.io.read_image` in full and reduced the way `hamedge infer
--reduced-decode` asks (both sides at least REDUCED_DECODE_FACTOR x the model's input: the default
model's 128 px input gives 256, so 1/4 of 1024; a 256 px input gives 512, 1/2). Core-ms per
image: process CPU time on one thread, rounds interleaved so load changes hit every row.

Writes benchmarks/results/reduced_decode_cpu.{md,json} (machine from lscpu, date, commit, load).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import RESULTS, ROOT, record_line, run_record
from infer_bound import XRAYS, core_ms

from hamedge.fsutil import write_text

DEFAULT_INPUT = 128  # the default model's input side (resnet18); the reduction it asks for


def make_inputs(work: Path) -> dict[str, list[Path]]:
    import cv2
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    import dicom_encodings

    src = sorted(XRAYS.glob("*.png"))
    if not src:
        sys.exit(f"no real X-rays in {XRAYS}")
    kinds = ("png", "jpeg q95", "jp2 lossless", "jp2 lossy 20:1", "dicom j2k lossless 8-bit",
             "dicom j2k lossless 12-bit", "dicom j2k lossy 8-bit")
    out: dict[str, list[Path]] = {k: [] for k in kinds}
    for i, path in enumerate(src):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        names = [work / f"x{i}.png", work / f"x{i}.jpg", work / f"x{i}.jp2", work / f"x{i}_lossy.jp2",
                 work / f"x{i}_8.dcm", work / f"x{i}_12.dcm", work / f"x{i}_lossy.dcm"]
        cv2.imwrite(str(names[0]), gray)
        cv2.imwrite(str(names[1]), gray, [cv2.IMWRITE_JPEG_QUALITY, 95])
        Image.fromarray(gray).save(names[2])
        Image.fromarray(gray).save(names[3], quality_mode="rates", quality_layers=[20])
        dicom_encodings.write(gray, 8, "j2k_lossless", names[4])
        dicom_encodings.write((gray.astype(np.uint16) << 4) | 7, 12, "j2k_lossless", names[5])
        dicom_encodings.write(gray, 8, "j2k_lossy", names[6])
        for kind, name in zip(kinds, names):
            out[kind].append(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from hamedge.io import read_image
    from hamedge.pipeline.run import REDUCED_DECODE_FACTOR

    info = run_record()
    targets = {f"reduced, input {size} (both sides >= {REDUCED_DECODE_FACTOR * size})": REDUCED_DECODE_FACTOR * size
               for size in (DEFAULT_INPUT, 256)}
    with tempfile.TemporaryDirectory(prefix="hamedge-reduced-") as tmp:
        files = make_inputs(Path(tmp))
        shapes = {kind: {label: list(read_image(paths[0], reduce_to).shape)
                         for label, reduce_to in targets.items()} for kind, paths in files.items()}
        samples: dict[str, dict[str, list[float]]] = {k: {} for k in files}
        for _ in range(args.rounds):
            for kind, paths in files.items():
                samples[kind].setdefault("full", []).append(core_ms(read_image, paths, 2))
                for label, reduce_to in targets.items():
                    samples[kind].setdefault(label, []).append(
                        core_ms(lambda p, r=reduce_to: read_image(p, r), paths, 2))
    info["load_average_1min_after"] = run_record()["load_average_1min"]
    median = {kind: {label: float(np.median(v)) for label, v in rows.items()} for kind, rows in samples.items()}
    result = {"machine": info, "rounds": args.rounds, "core_ms_per_image": median, "samples": samples,
              "reduced_shapes": shapes}
    write_text(RESULTS / "reduced_decode_cpu.json", json.dumps(result, indent=1) + "\n")
    labels = list(targets)
    lines = [f"# --reduced-decode: decode core-ms per 1024 px image ({info['date']})", "",
             f"- measured {record_line(info)} Load average after: {info['load_average_1min_after']}.",
             f"- the three real NIH X-rays, `hamedge.io.read_image`, process CPU time on one thread, "
             f"median of {args.rounds} interleaved rounds", "",
             "| input | full | " + " | ".join(labels) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in labels) + " |"]
    for kind, row in median.items():
        cells = [f"{row[label]:.2f} ({row['full'] / row[label]:.1f}x, {shapes[kind][label][0]} px)"
                 for label in labels]
        lines.append(f"| {kind} | {row['full']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "PNG cannot be reduced (same work in every column). JPEG reduces by DCT scaling "
              "(1/2, 1/4, 1/8); JPEG 2000 drops wavelet resolution levels (at most the codestream's "
              "decomposition levels; these files have 5)."]
    write_text(RESULTS / "reduced_decode_cpu.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
