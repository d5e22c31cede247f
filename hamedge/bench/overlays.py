"""Bench overlays: each configuration's heatmap over a few sample X-rays, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hamedge.bench.eager import NAME as EAGER
from hamedge.bench.results import config_name
from hamedge.bench.timing import end_to_end

OVERLAY_SIZE = 256  # px of each overlay tile on the page


def write_overlays(results, out: Path, eager, opened, files: list[Path], spec,
                   limit: int = 3) -> None:
    """For a few sample images: each configuration's heatmap of the finding the reference rates
    most likely, over the X-ray, side by side; white contour = the binarised map."""
    import cv2

    from hamedge import heatmap as hm
    from hamedge.fsutil import write_bytes
    from hamedge.io import read_image

    side = (OVERLAY_SIZE, OVERLAY_SIZE)
    for i, f in enumerate(files[:limit]):
        small = cv2.resize(hm.to_display(read_image(f)), side, interpolation=cv2.INTER_AREA)
        ref = eager.end_to_end([f])
        k = int(np.argmax(ref["class_probs"][0]))
        maps = {config_name(EAGER, "fp32"): (ref["heatmaps"][0, 1 + k], float(ref["class_probs"][0, k]))}
        for backend in opened:
            o, heat = end_to_end(backend, [f], spec)
            maps[config_name(backend.name, backend.precision)] = (heat[0, 1 + k],
                                                                  float(o.class_probs[0, k]))
        for name, (heat, prob) in maps.items():
            heat = np.asarray(heat, np.float32)
            tile = np.ascontiguousarray(hm.overlay(small, heat))
            mask = cv2.resize((heat >= spec.cam_threshold).astype(np.uint8), side,
                              interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, (255, 255, 255), 1)
            rel = f"overlays/{i:02d}_{name.replace('/', '_')}.png"
            write_bytes(out / rel, hm.encode_png(tile))
            results["overlays"].append({"image": Path(f).name, "config": name, "file": rel,
                                        "caption": f"{spec.class_names[k]} p={prob:.3f}"})
