"""Synthetic frontal chest radiographs with image labels and boxes, in the NIH layout.

Not a medical simulator: a cheap, deterministic stand-in for real X-rays, rich enough that a HAM
model must learn *where* a finding is (its appearance and typical region) and cannot just count
pixels. Each image is drawn in a canonical frame (thorax outline, lung fields, heart and
mediastinum, spine, ribs, clavicles, diaphragm domes, lung markings), findings are added as
separate masks, then the whole picture and the masks get one random rotation/scale/shift,
exposure, contrast, gamma and noise. A finding's box is the bounding box of its warped mask, so
boxes always match what was drawn.

Determinism: image ``i`` of seed ``s`` depends only on ``(s, i)`` (numpy SeedSequence), never on
the worker that drew it, so the same seed gives byte-identical files with any number of workers.
No torch here (numpy + OpenCV).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hamedge.errors import DataError
from hamedge.fsutil import write_text

# bump whenever the same seed would draw different pixels. 4: small lesions larger and denser, so
# that a from-scratch demo model learns every class within a 2-core CPU training budget.
SYNTH_VERSION = 4

# The findings the generator draws, in the (fixed) order of the demo model's class list.
SYNTH_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax", "Consolidation",
)

NORMAL_PROBABILITY = 0.4
# Relative frequency of each finding among abnormal images (same order as SYNTH_CLASSES).
_CLASS_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.8, 1.0, 0.8, 1.0])
_SPLIT_STREAM = 0x5B117  # extra seed word for the split permutation (independent of images)


@dataclass
class _Lung:
    mask: np.ndarray  # float32 (S, S), 1 inside this lung (heart removed)
    side: int  # -1: image left (patient's right lung), +1: image right
    top: float  # apex y (pixels)
    base: float  # costophrenic angle y (pixels)
    medial: float  # medial border x
    lateral: float  # lateral border x


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words]))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    if sigma > 4.0:  # wide blurs: blur a quarter-size copy and scale it back (about 10x cheaper)
        h, w = img.shape
        small = cv2.resize(img, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / 4, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid upsampled with cubic interpolation."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _poly(points: list[tuple[float, float]]) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)


def _fill(size: int, polys: list[np.ndarray]) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, polys, 255, lineType=cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def _ellipse_mask(size: int, center, axes, angle: float) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    pts = cv2.ellipse2Poly((int(round(center[0])), int(round(center[1]))),
                           (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
                           int(round(angle)), 0, 360, 5)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def _lung_polygon(rng, S, side, cx, top, base, width, dome):
    """Outline of one lung: apex, convex lateral border, sharp costophrenic angle, dome-shaped base."""
    medial = cx + side * S * rng.uniform(0.035, 0.05)
    pts = []
    for t in np.linspace(0.0, 1.0, 14):  # lateral border, apex -> costophrenic angle
        y = top + t * (base - top)
        reach = width * (0.25 + 0.75 * np.sqrt(np.sin(min(1.0, t * 1.15) * np.pi / 2)))
        pts.append((medial + side * reach, y))
    for u in np.linspace(1.0, 0.0, 12):  # base: the dome is highest in the middle of the hemithorax
        x = medial + side * width * u
        pts.append((x, base - dome * np.sin(np.pi * (0.15 + 0.85 * u) ** 0.9)))
    for t in np.linspace(0.92, 0.0, 8):  # medial border, back up to the apex
        y = top + t * (base - top)
        pts.append((medial + side * width * 0.06 * (1 - t) ** 2, y))
    return _poly(pts), medial, medial + side * width


def _sample_point(rng, mask: np.ndarray, ymin: float = 0.0, ymax: float = 1e9, margin: float = 0.0):
    """A random pixel of mask (> 0.5) whose y lies in [ymin, ymax] and that lies about ``margin``
    px inside the mask (checked in 8 directions: much cheaper than an erosion)."""
    ys, xs = np.nonzero(mask > 0.5)
    keep = (ys >= ymin) & (ys <= ymax)
    if keep.any():
        ys, xs = ys[keep], xs[keep]
    h, w = mask.shape
    d = margin / np.sqrt(2)
    offsets = [(margin, 0), (-margin, 0), (0, margin), (0, -margin), (d, d), (d, -d), (-d, d), (-d, -d)]
    for _ in range(64):
        i = int(rng.integers(len(ys)))
        x, y = float(xs[i]), float(ys[i])
        if all(mask[min(max(int(y + oy), 0), h - 1), min(max(int(x + ox), 0), w - 1)] > 0.5
               for ox, oy in offsets):
            return x, y
    return x, y  # a thin region: accept the last candidate


def _pick_labels(rng: np.random.Generator) -> list[str]:
    if rng.random() < NORMAL_PROBABILITY:
        return []
    n = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    idx = rng.choice(len(SYNTH_CLASSES), size=n, replace=False, p=_CLASS_WEIGHTS / _CLASS_WEIGHTS.sum())
    return [SYNTH_CLASSES[i] for i in sorted(idx)]


def _bbox(mask: np.ndarray, level: float = 0.3) -> list[int] | None:
    ys, xs = np.nonzero(mask >= level * max(float(mask.max()), 1e-6))
    if len(ys) == 0 or mask.max() <= 0.05:
        return None
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def render(index: int, seed: int, size: int = 512, *, draw_findings: bool = True,
           ) -> tuple[np.ndarray, list[str], dict[str, list[list[int]]]]:
    """Draw synthetic image ``index`` of ``seed``.

    ``draw_findings=False`` draws the same picture without the lesions (every random draw is
    still made, so only the findings differ; an enlarged heart stays, it is anatomy): for tests
    and for looking at what a finding changes.

    Returns (uint8 (size, size) image, labels in SYNTH_CLASSES order, {class: [[x, y, w, h], ...]}
    in pixels of this image). An empty label list is a normal image.
    """
    if size < 32:
        raise DataError(f"synthetic images need size >= 32, not {size}")
    S = int(size)
    rng = _rng(seed, int(index))
    labels = _pick_labels(rng)
    # Broadcasting coordinate grids (a column and a row), cheaper than full mgrid arrays.
    yy = np.arange(S, dtype=np.float32)[:, None]
    xx = np.arange(S, dtype=np.float32)[None, :]

    # --- body and thorax ---------------------------------------------------------------------
    cx = S * (0.5 + rng.normal(0, 0.01))
    half_w = S * rng.uniform(0.37, 0.43)
    top = S * rng.uniform(0.13, 0.18)
    base_r = S * rng.uniform(0.70, 0.77)  # right costophrenic angle (image left)
    base_l = base_r + S * rng.uniform(0.0, 0.03)  # left hemidiaphragm usually a little lower
    tissue = rng.uniform(0.50, 0.60)
    img = np.full((S, S), rng.uniform(0.03, 0.08), np.float32)
    body = _ellipse_mask(S, (cx, S * 0.58), (half_w * 1.08, S * 0.62), 0)
    body = np.maximum(body, _ellipse_mask(S, (cx, S * 0.08), (half_w * 1.25, S * 0.14), 0))  # shoulders
    body = _blur(body, S * 0.012)
    img += body * (tissue - img) * (0.85 + 0.15 * np.clip(1 - np.abs(xx - cx) / (half_w * 1.1), 0, 1))

    # --- lungs -------------------------------------------------------------------------------
    lungs: list[_Lung] = []
    for side, base in ((-1, base_r), (+1, base_l)):
        width = half_w * rng.uniform(0.72, 0.82) * (0.92 if side > 0 else 1.0)
        poly, medial, lateral = _lung_polygon(rng, S, side, cx, top + S * rng.uniform(-0.01, 0.01),
                                              base, width, S * rng.uniform(0.05, 0.08))
        lungs.append(_Lung(_fill(S, [poly]), side, float(top), float(base), float(medial), float(lateral)))

    # Heart: patient's left = image right. Cardiomegaly widens it (cardiothoracic ratio > ~0.55).
    cardio = "Cardiomegaly" in labels
    heart_w = S * rng.uniform(0.12, 0.14) * (rng.uniform(1.18, 1.5) if cardio else rng.uniform(0.92, 1.1))
    heart_h = S * rng.uniform(0.085, 0.105) * (rng.uniform(1.08, 1.2) if cardio else 1.0)
    heart_c = (cx + heart_w * 0.45 + S * rng.normal(0, 0.005), (base_r + base_l) / 2 - heart_h * 0.55)
    heart = _ellipse_mask(S, heart_c, (heart_w, heart_h), rng.uniform(-25, -12))
    for lung in lungs:
        lung.mask *= 1.0 - heart
    lung_all = np.clip(lungs[0].mask + lungs[1].mask, 0, 1)
    lung_soft = _blur(lung_all, S * 0.006)

    # Lung fields are darker (air), a little darker laterally and at the apices.
    depth = rng.uniform(0.28, 0.36)
    apex_gradient = np.clip((yy - top) / (base_r - top), 0, 1)
    img -= lung_soft * depth * (1.0 - 0.12 * apex_gradient)

    # Lung markings: vessels fanning out of each hilum, fading towards the periphery.
    markings = np.zeros((S, S), np.float32)
    for lung in lungs:
        hilum = (lung.medial + lung.side * S * 0.04, lung.top + 0.45 * (lung.base - lung.top))
        for _ in range(int(rng.integers(14, 22))):
            ang = rng.uniform(-1.2, 1.2) + (0.0 if lung.side > 0 else np.pi)
            length = S * rng.uniform(0.12, 0.28)
            p0 = np.array(hilum)
            for seg in range(4):  # slightly tortuous, thinning branches
                ang_s = ang + rng.normal(0, 0.18)
                p1 = p0 + length / 4 * np.array([np.cos(ang_s), np.sin(ang_s)])
                thick = max(1, int(round(S * 0.006 * (1 - seg / 4))))
                cv2.line(markings, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1.0, thick, cv2.LINE_AA)
                p0 = p1
    markings = _blur(markings, S * 0.002) * lung_all
    markings_intact = markings.copy()

    # Mediastinum, spine (with vertebral end plates) and heart, brighter than the lungs.
    medi = _fill(S, [_poly([(cx - S * 0.05, S * 0.05), (cx + S * 0.055, S * 0.05),
                            (cx + S * 0.075, heart_c[1]), (cx - S * 0.065, heart_c[1])])])
    dense = rng.uniform(0.68, 0.78)
    solid = _blur(np.maximum(medi, heart), S * 0.006)
    img += solid * (dense - img) * 0.9
    spine = np.clip(1 - np.abs(xx - cx) / (S * 0.035), 0, 1) ** 0.5
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (yy - top) / (S * rng.uniform(0.045, 0.055)))
    img += spine * (0.05 + 0.04 * vert) * (yy > S * 0.03)

    # Ribs: posterior ribs as thick curved bands from the spine sweeping laterally and down,
    # anterior ribs fainter; clavicles on top.
    ribs = np.zeros((S, S), np.float32)
    n_ribs = int(rng.integers(9, 11))
    spacing = (base_r - top) / (n_ribs - 1.5)
    for side in (-1, 1):
        for k in range(n_ribs):
            y = top - S * 0.01 + k * spacing + rng.normal(0, S * 0.004)
            a, b = int(half_w * rng.uniform(0.8, 0.92)), int(S * rng.uniform(0.07, 0.09))
            # Posterior rib: from the spine up and out, then down along the lateral chest wall
            # (the upper half of an ellipse whose medial end sits at the spine).
            center = (int(cx + side * (a - S * 0.02)), int(y))
            start, end = (160, 360) if side < 0 else (180, 380)
            cv2.ellipse(ribs, center, (a, b), 0, start, end, 1.0, max(1, int(S * 0.016)), cv2.LINE_AA)
            # Anterior rib (fainter): from the lateral wall down and in (lower half of an ellipse).
            center_a = (int(cx - side * S * 0.02), int(y - S * 0.02))
            start, end = (105, 175) if side < 0 else (5, 75)
            cv2.ellipse(ribs, center_a, (int(a * 0.95), int(S * 0.1)), 0, start, end, 0.5,
                        max(1, int(S * 0.012)), cv2.LINE_AA)
        clav_in = (int(cx + side * S * 0.04), int(top + S * 0.02))
        clav_out = (int(cx + side * half_w * 0.95), int(top - S * rng.uniform(0.03, 0.06)))
        cv2.line(ribs, clav_in, clav_out, 1.3, max(1, int(S * 0.02)), cv2.LINE_AA)
    ribs = _blur(ribs, S * 0.003) * body
    img += ribs * rng.uniform(0.06, 0.1)

    # --- findings ----------------------------------------------------------------------------
    found: list[tuple[str, np.ndarray]] = []  # (class, mask in the canonical frame)
    lesion_layer = np.zeros((S, S), np.float32)

    def pick_lung() -> _Lung:
        return lungs[int(rng.integers(2))]

    for name in labels:
        if name == "Cardiomegaly":
            found.append((name, heart))
        elif name == "Nodule":
            for _ in range(1 if rng.random() < 0.75 else 2):
                lung = pick_lung()
                x, y = _sample_point(rng, lung.mask, margin=S * 0.03)
                r = S * rng.uniform(0.016, 0.03)
                m = _blur(_ellipse_mask(S, (x, y), (r, r * rng.uniform(0.85, 1.0)), rng.uniform(0, 180)), r * 0.25)
                lesion_layer += m * rng.uniform(0.2, 0.32)
                found.append((name, m))
        elif name == "Mass":
            lung = pick_lung()
            r = S * rng.uniform(0.035, 0.07)
            x, y = _sample_point(rng, lung.mask, margin=r * 0.8)
            m = np.zeros((S, S), np.float32)
            for _ in range(int(rng.integers(3, 6))):  # lobulated outline
                off = rng.normal(0, r * 0.3, 2)
                rr = r * rng.uniform(0.55, 0.9)
                m = np.maximum(m, _ellipse_mask(S, (x + off[0], y + off[1]), (rr, rr * rng.uniform(0.8, 1)), 0))
            m = _blur(m, r * 0.15)
            texture = 1.0 + 0.15 * _smooth_field(rng, S, 24)
            lesion_layer += m * texture * rng.uniform(0.24, 0.38)
            found.append((name, m))
        elif name == "Effusion":
            sides = [pick_lung()] if rng.random() < 0.8 else lungs
            for lung in sides:
                h = (lung.base - lung.top) * rng.uniform(0.18, 0.4)
                # Meniscus: the fluid climbs higher along the lateral chest wall than medially.
                u = np.clip((xx - lung.medial) / (lung.lateral - lung.medial), 0, 1)
                level = lung.base - h * (0.45 + 0.55 * u ** 2)
                region = lung.mask * np.clip((yy - level) / (S * 0.012), 0, 1)
                m = _blur(region, S * 0.004)
                lesion_layer += m * rng.uniform(0.3, 0.45) * (0.8 + 0.2 * np.clip((yy - level) / h, 0, 1))
                found.append((name, m))
        elif name == "Pneumothorax":
            lung = pick_lung()
            binary = (lung.mask > 0.5).astype(np.uint8)
            dist = cv2.distanceTransform(binary, cv2.DIST_L2, 3)
            d = S * rng.uniform(0.025, 0.065)
            ylim = lung.top + (lung.base - lung.top) * rng.uniform(0.45, 0.75)
            lateral_side = (xx - lung.medial) * lung.side > abs(lung.lateral - lung.medial) * 0.3
            keep = (yy < ylim) & (lateral_side | (yy < lung.top + (lung.base - lung.top) * 0.2))
            region = ((dist > 0) & (dist < d) & keep).astype(np.float32)
            line = ((dist >= d) & (dist < d + max(1.0, S * 0.003)) & keep).astype(np.float32)
            markings *= 1.0 - _blur(region, S * 0.004)  # no lung markings beyond the pleural line
            lesion_layer -= _blur(region, S * 0.003) * rng.uniform(0.05, 0.1)
            lesion_layer += _blur(line, S * 0.0015) * rng.uniform(0.10, 0.18)
            found.append((name, region))
        elif name == "Consolidation":
            lung = pick_lung()
            zone = int(rng.integers(3))  # upper, middle, lower lobe region
            y_lo = lung.top + (lung.base - lung.top) * zone / 3
            x, y = _sample_point(rng, lung.mask, y_lo, y_lo + (lung.base - lung.top) / 3, margin=S * 0.03)
            m = np.zeros((S, S), np.float32)
            for _ in range(int(rng.integers(4, 9))):
                bx, by = x + rng.normal(0, S * 0.03), y + rng.normal(0, S * 0.025)
                sig = S * rng.uniform(0.015, 0.035)
                m += np.exp(-((yy - by) ** 2) / (2 * sig * sig)) * np.exp(-((xx - bx) ** 2) / (2 * sig * sig))
            patchy = np.clip(0.75 + 0.5 * _smooth_field(rng, S, 40), 0, 1)
            m = np.clip(m, 0, 1) * patchy * lung.mask
            lesion_layer += m * rng.uniform(0.22, 0.34)
            found.append((name, m))
        elif name == "Atelectasis":
            lung = pick_lung()
            y_lo = lung.top + (lung.base - lung.top) * 0.55
            x, y = _sample_point(rng, lung.mask, y_lo, lung.base, margin=S * 0.03)
            axes = (S * rng.uniform(0.05, 0.09), S * rng.uniform(0.014, 0.026))  # plate-like band
            m = _ellipse_mask(S, (x, y), axes, rng.uniform(-25, 25) * -lung.side)
            m = _blur(m, S * 0.003) * np.clip(lung.mask * 1.5, 0, 1)
            lesion_layer += m * rng.uniform(0.24, 0.34)
            found.append((name, m))

    if not draw_findings:
        lesion_layer[:] = 0
        markings = markings_intact
    img += markings * rng.uniform(0.05, 0.09) + lesion_layer

    # --- pose, exposure and noise ---------------------------------------------------------------
    angle = rng.uniform(-5, 5)
    scale = rng.uniform(0.92, 1.04)
    M = cv2.getRotationMatrix2D((S / 2, S / 2), angle, scale)
    M[:, 2] += rng.uniform(-0.03, 0.03, 2) * S
    warp = dict(dsize=(S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    background = float(img[0, 0])
    img = cv2.warpAffine(img, M, borderValue=background, **warp)
    img += 0.03 * _smooth_field(rng, S, 6)  # uneven exposure / soft tissue
    img = np.clip(img, 0, 1)
    img = img ** rng.uniform(0.8, 1.25)
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)
    noise = rng.standard_normal((S, S), dtype=np.float32) * rng.uniform(0.008, 0.022)
    img += _blur(noise, rng.uniform(0.4, 0.9))
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    boxes: dict[str, list[list[int]]] = {}
    for name, mask in found:
        box = _bbox(cv2.warpAffine(mask, M, borderValue=0.0, **warp))
        if box is not None:
            boxes.setdefault(name, []).append(box)
    labels = [n for n in SYNTH_CLASSES if n in boxes]  # a finding warped out of view is dropped
    return image, labels, boxes


# ---------------------------------------------------------------------------------------------
# Writing a data set


def _render_png(args: tuple[int, int, int, str]) -> tuple[int, list[str], dict]:
    index, seed, size, out = args
    image, labels, boxes = render(index, seed, size)
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV failure
        raise RuntimeError("PNG encoding failed")
    # The whole data set is written into a temporary folder that is renamed into place at the
    # end (see generate), so a per-file temp+rename (and its fsync) would add nothing.
    with open(Path(out) / image_name(index), "wb") as handle:
        handle.write(data.tobytes())
    return index, labels, boxes


def _json_lines(mapping: dict) -> str:
    """A JSON object with one entry per line: compact, yet readable and diff-friendly."""
    rows = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in mapping.items()]
    return "{\n" + ",\n".join(rows) + "\n}\n"


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core


def image_name(index: int) -> str:
    return f"synth_{index:06d}.png"


def split_indices(count: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """Disjoint train/val/test index lists (sorted), a seeded shuffle of range(count)."""
    perm = _rng(seed, _SPLIT_STREAM).permutation(count)
    n_test = int(round(count * test_fraction))
    n_val = int(round(count * val_fraction))
    return {
        "test": sorted(int(i) for i in perm[:n_test]),
        "val": sorted(int(i) for i in perm[n_test:n_test + n_val]),
        "train": sorted(int(i) for i in perm[n_test + n_val:]),
    }


def generate(out_dir: str | os.PathLike, count: int, seed: int, size: int = 512,
             val_fraction: float = 0.15, test_fraction: float = 0.15, box_fraction: float = 0.25,
             workers: int | None = None, overwrite: bool = False) -> dict:
    """Write ``count`` synthetic images and their annotations in the NIH layout under ``out_dir``.

    Layout: images/*.png (8-bit gray), Annotations/Tags.json ({name: [labels]}),
    Annotations/BBoxes.json ({name: {class: [[x, y, w, h], ...]}}) for every val and test image
    with findings and for the box-supervised train images, ImageSets/Main/{train,val,test}.txt,
    ImageSets/bbox/{train,val,test}.txt and dataset.json. The box-supervised train images are a
    seeded ``box_fraction`` share of the train images *that have findings* (normal images have
    no boxes to supervise with). Returns the dataset.json content (plus "seconds").

    With ``workers`` > 1 the images are drawn by a forkserver process pool, so a calling script
    needs the usual ``if __name__ == "__main__":`` guard; ``workers=1`` draws in-process.
    """
    out = Path(out_dir)
    if count < 1:
        raise DataError("count must be at least 1")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("val and test fractions must be in [0, 1) and leave some train images")
    if not 0 <= box_fraction <= 1:
        raise DataError("box_fraction must be in [0, 1]")
    if size < 32:
        raise DataError(f"image size must be at least 32, not {size}")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty (pass overwrite=True / --overwrite to replace it)")

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        jobs = [(i, seed, size, str(tmp / "images")) for i in range(count)]
        workers = workers or min(os.cpu_count() or 1, 8)
        results: dict[int, tuple[list[str], dict]] = {}
        if workers <= 1 or count < 8:
            for job in jobs:
                i, labels, boxes = _render_png(job)
                results[i] = (labels, boxes)
        else:
            # Not "fork": a parent whose OpenCV/OpenMP thread pools are already running can
            # deadlock in a forked child. forkserver children start clean and cheaply.
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            with ctx.Pool(workers, initializer=_init_worker) as pool:
                for i, labels, boxes in pool.imap_unordered(_render_png, jobs, chunksize=8):
                    results[i] = (labels, boxes)

        splits = split_indices(count, seed, val_fraction, test_fraction)
        abnormal_train = [i for i in splits["train"] if results[i][0]]
        n_box = int(round(len(abnormal_train) * box_fraction))
        box_train = sorted(int(i) for i in _rng(seed, _SPLIT_STREAM, 1).permutation(abnormal_train)[:n_box]) \
            if abnormal_train else []
        bbox_sets = {"train": box_train,
                     "val": [i for i in splits["val"] if results[i][0]],
                     "test": [i for i in splits["test"] if results[i][0]]}

        tags = {image_name(i): results[i][0] for i in range(count)}
        bboxes = {image_name(i): results[i][1] for s in ("train", "val", "test") for i in bbox_sets[s]}
        bboxes = dict(sorted(bboxes.items()))
        write_text(tmp / "Annotations" / "Tags.json", _json_lines(tags))
        write_text(tmp / "Annotations" / "BBoxes.json", _json_lines(bboxes))
        for kind, sets in (("Main", splits), ("bbox", bbox_sets)):
            for split, idx in sets.items():
                write_text(tmp / "ImageSets" / kind / f"{split}.txt", "".join(image_name(i) + "\n" for i in idx))
        counts = {c: sum(c in results[i][0] for i in range(count)) for c in SYNTH_CLASSES}
        info = {
            "generator": "hamedge.synth",
            "version": SYNTH_VERSION,
            "seed": int(seed),
            "count": int(count),
            "size": int(size),
            "classes": list(SYNTH_CLASSES),
            "splits": {s: len(v) for s, v in splits.items()},
            "bbox_splits": {s: len(v) for s, v in bbox_sets.items()},
            "normal": sum(not results[i][0] for i in range(count)),
            "class_counts": counts,
        }
        write_text(tmp / "dataset.json", json.dumps(info, indent=2))

        # Swap the finished folder into place; an old one is moved aside first and removed after.
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["seconds"] = time.perf_counter() - start
    return info
