"""Labelled chest X-ray sets on disk -> ``LabelledSet`` of ``Record``s. No torch.

Readers:
- ``load_nih_layout``: the layout the HAM reference reads and ``hamedge synth`` writes
  (images/, Annotations/Tags.json, Annotations/BBoxes.json, ImageSets/{Main,bbox}/<split>.txt).
- ``load_nih_csv``: the original ChestX-ray14 release (Data_Entry_2017.csv, BBox_List_2017.csv,
  train_val_list.txt / test_list.txt).
- ``load_chexpert_csv``: CheXpert's train.csv / valid.csv, optionally with HAM's CheXpert boxes.
- ``load_dataset``: picks one of the above from what the folder holds.

Class names are matched leniently (case, spaces, underscores, hyphens ignored) and through a few
known aliases (NIH's box list says "Infiltrate"; HAM's CheXpert boxes say "Pleural_Effusion",
"Enlarg_Cardiomediastinum", "edema"). A label or box of a class the caller's class list does not
know is an error naming it, unless ``unknown="ignore"``: then it is dropped with one warning
(useful to read a 14-class set for a model with fewer classes).
Boxes are ``(x, y, w, h)`` floats in the pixels of the image file.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hamedge.errors import DataError
from hamedge.spec import NIH_CLASSES

CHEXPERT_CLASSES: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
NO_FINDING = "nofinding"
# Known spelling variants (normalised key -> the normalised keys they may stand for, in order).
_ALIASES: dict[str, tuple[str, ...]] = {
    "infiltrate": ("infiltration",),
    "infiltration": ("infiltrate",),
    "enlargcardiomediastinum": ("enlargedcardiomediastinum",),
    "pleuraleffusion": ("effusion",),
    "effusion": ("pleuraleffusion",),
}

# An annotated box: (x, y, w, h) floats in the pixels of the image file. (hamedge.heatmap.Box is a
# different thing: a region found in a heatmap, with its score and area.)
Rect = tuple[float, float, float, float]


@dataclass
class Record:
    """One labelled image."""

    name: str
    path: Path
    labels: np.ndarray  # float32 multi-hot over the set's class_names
    boxes: dict[str, list[Rect]] = field(default_factory=dict)  # class -> [(x, y, w, h)] in image pixels
    box_supervised: bool = False  # its boxes may supervise training / are the evaluation boxes
    label_weights: np.ndarray | None = None  # CheXpert uncertain="ignore": 0 where a label is unknown

    @property
    def is_normal(self) -> bool:
        return not bool(np.any(self.labels > 0))


@dataclass
class LabelledSet:
    root: Path
    class_names: tuple[str, ...]
    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def label_matrix(self) -> np.ndarray:
        """(N, K) float32 labels."""
        if not self.records:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.stack([r.labels for r in self.records]).astype(np.float32)

    def subset(self, records: Iterable[Record]) -> "LabelledSet":
        return LabelledSet(self.root, self.class_names, list(records))

    def with_boxes(self) -> "LabelledSet":
        """The records whose boxes are the evaluation / supervision boxes."""
        return self.subset(r for r in self.records if r.box_supervised and r.boxes)


# ---------------------------------------------------------------------------------------------
# Class names


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


class _ClassMatcher:
    """Maps label spellings found in data onto the caller's class list."""

    def __init__(self, class_names: Sequence[str], unknown: str) -> None:
        if unknown not in ("error", "ignore"):
            raise DataError(f"unknown must be 'error' or 'ignore', not {unknown!r}")
        self.class_names = tuple(class_names)
        self.index = {_key(n): i for i, n in enumerate(self.class_names)}
        self.unknown = unknown
        self.missing: Counter[str] = Counter()

    def __call__(self, name: str) -> int | None:
        key = _key(name)
        if key in self.index:
            return self.index[key]
        for alias in _ALIASES.get(key, ()):
            if alias in self.index:
                return self.index[alias]
        self.missing[name.strip()] += 1
        return None

    def finish(self, where: str) -> None:
        if not self.missing:
            return
        names = ", ".join(f"{n!r} ({c}x)" for n, c in sorted(self.missing.items()))
        if self.unknown == "error":
            raise DataError(f"{where}: class name(s) not in the class list: {names} "
                            "(pass unknown='ignore' / --ignore-unknown-classes to drop them)")
        warnings.warn(f"{where}: ignored labels/boxes of classes not in the class list: {names}", stacklevel=3)


def _split_labels(value) -> list[str]:
    """Tags.json value: a list of names, NIH's 'A|B' string, or 'No Finding'."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split("|")
    elif isinstance(value, (list, tuple)):
        parts = [p for v in value for p in (v.split("|") if isinstance(v, str) else [v])]
    else:
        raise DataError(f"labels must be a list of names or an 'A|B' string, not {value!r}")
    out = []
    for p in parts:
        if not isinstance(p, str):
            raise DataError(f"label {p!r} is not a class name")
        if p.strip() and _key(p) != NO_FINDING:
            out.append(p.strip())
    return out


def _multi_hot(names: Iterable[str], match: _ClassMatcher) -> np.ndarray:
    labels = np.zeros(len(match.class_names), np.float32)
    for n in names:
        i = match(n)
        if i is not None:
            labels[i] = 1.0
    return labels


def _boxes(raw: dict, match: _ClassMatcher, corners: bool, where: str) -> dict[str, list[Rect]]:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: boxes must map class -> [[x, y, w, h], ...]")
    out: dict[str, list[Rect]] = {}
    for cls, boxes in raw.items():
        i = match(cls)
        if i is None:
            continue
        if boxes and isinstance(boxes[0], (int, float)):
            boxes = [boxes]  # a single box written flat
        for b in boxes:
            if len(b) != 4:
                raise DataError(f"{where}: a box needs 4 numbers, got {b!r}")
            x, y, a, c = (float(v) for v in b)
            box = (x, y, a - x, c - y) if corners else (x, y, a, c)
            if box[2] <= 0 or box[3] <= 0:
                raise DataError(f"{where}: box {list(b)} of {cls} has no area")
            out.setdefault(match.class_names[i], []).append(box)
    return out


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------
# NIH layout


def load_nih_layout(root: str | os.PathLike, split: str | None = "test",
                    class_names: Sequence[str] | None = None, unknown: str = "error") -> LabelledSet:
    """Read the NIH/HAM layout. ``split`` None or "all": every image in Tags.json.

    Records listed in ImageSets/bbox/<split>.txt are ``box_supervised`` (for split "all": every
    image that has boxes). Class names default to dataset.json's "classes", else the NIH 14.
    """
    root = Path(root)
    tags_path = root / "Annotations" / "Tags.json"
    if not tags_path.is_file():
        raise DataError(f"{root}: not an NIH-layout data set (no Annotations/Tags.json)")
    if class_names is None:
        info = root / "dataset.json"
        class_names = tuple(_read_json(info).get("classes", NIH_CLASSES)) if info.is_file() else NIH_CLASSES
    match = _ClassMatcher(class_names, unknown)
    tags = _read_json(tags_path)
    if not isinstance(tags, dict):
        raise DataError(f"{tags_path}: expected {{image: labels}}")
    boxes_path = root / "Annotations" / "BBoxes.json"
    all_boxes = _read_json(boxes_path) if boxes_path.is_file() else {}

    if split in (None, "all"):
        names = sorted(tags)
        box_names = {n for n in names if n in all_boxes}
    else:
        list_path = root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_path.is_file():
            have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
            raise DataError(f"{root}: no split {split!r} (ImageSets/Main/{split}.txt); "
                            f"splits here: {', '.join(have) or 'none'}")
        names = _read_list(list_path)
        bbox_list = root / "ImageSets" / "bbox" / f"{split}.txt"
        box_names = set(_read_list(bbox_list)) if bbox_list.is_file() else set()

    records = []
    missing_tags = [n for n in names if n not in tags]
    if missing_tags:
        raise DataError(f"{tags_path}: no labels for {len(missing_tags)} listed image(s), e.g. {missing_tags[0]}")
    for name in names:
        labels = _multi_hot(_split_labels(tags[name]), match)
        boxes = _boxes(all_boxes.get(name, {}), match, corners=False, where=f"{boxes_path} [{name}]")
        records.append(Record(name, root / "images" / name, labels, boxes, name in box_names))
    match.finish(str(root))
    absent = [r.name for r in records if not r.path.is_file()]
    if absent:
        raise DataError(f"{root / 'images'}: {len(absent)} listed image(s) missing, e.g. {absent[0]}")
    return LabelledSet(root, tuple(class_names), records)


# ---------------------------------------------------------------------------------------------
# NIH original CSVs


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: invalid CSV ({exc})") from None
    lost = [c for c in required if c not in header]
    if lost:
        raise DataError(f"{path}: missing column(s) {', '.join(repr(c) for c in lost)}")
    return rows


def _image_index(root: Path, images_dir: str | None) -> dict[str, Path]:
    """file name -> path: root/images_dir if given and present, else every image under root."""
    folder = root / images_dir if images_dir else None
    if folder is not None and folder.is_dir():
        return {p.name: p for p in folder.iterdir()}
    return {p.name: p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")}


def load_nih_csv(root: str | os.PathLike, csv: str = "Data_Entry_2017.csv",
                 bbox_csv: str | None = "BBox_List_2017.csv", split: str | None = None,
                 images_dir: str | None = "images", class_names: Sequence[str] | None = None,
                 unknown: str = "error") -> LabelledSet:
    """The original ChestX-ray14 release. ``split`` "test" reads test_list.txt, "train"/"trainval"
    train_val_list.txt, None every row. Images listed in the box CSV are ``box_supervised``."""
    root = Path(root)
    class_names = tuple(class_names or NIH_CLASSES)
    match = _ClassMatcher(class_names, unknown)
    rows = _read_csv(root / csv, ["Image Index", "Finding Labels"])
    keep: set[str] | None = None
    if split is not None:
        list_name = {"test": "test_list.txt", "train": "train_val_list.txt",
                     "trainval": "train_val_list.txt", "val": "train_val_list.txt"}.get(split)
        if list_name is None:
            raise DataError(f"unknown NIH split {split!r} (test, train or trainval)")
        if not (root / list_name).is_file():
            raise DataError(f"{root}: split {split!r} needs {list_name}")
        keep = set(_read_list(root / list_name))
    boxes: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    if bbox_csv and (root / bbox_csv).is_file():
        columns = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
        for row in _read_csv(root / bbox_csv, columns):
            try:
                box = [float(row[c]) for c in columns[2:]]
            except (TypeError, ValueError):
                raise DataError(f"{root / bbox_csv}: bad box numbers for {row['Image Index']}") from None
            boxes[row["Image Index"]][row["Finding Label"]].append(box)
    paths = _image_index(root, images_dir)
    records = []
    for row in rows:
        name = row["Image Index"].strip()
        if keep is not None and name not in keep:
            continue
        labels = _multi_hot(_split_labels(row["Finding Labels"]), match)
        rec_boxes = _boxes(boxes.get(name, {}), match, False, f"{root / str(bbox_csv)} [{name}]")
        records.append(Record(name, paths.get(name, root / (images_dir or "") / name), labels,
                              rec_boxes, name in boxes))
    match.finish(str(root / csv))
    return LabelledSet(root, class_names, records)


# ---------------------------------------------------------------------------------------------
# CheXpert


def _chexpert_path(root: Path, rel: str) -> Path:
    """CheXpert's Path column starts with the release folder name (CheXpert-v1.0[-small]/...)."""
    rel_path = Path(rel)
    for candidate in (root / rel_path, root.parent / rel_path, root / Path(*rel_path.parts[1:])):
        if candidate.is_file():
            return candidate
    return root / Path(*rel_path.parts[1:]) if len(rel_path.parts) > 1 else root / rel_path


def _box_key(rel: str) -> str:
    """Key of HAM's CheXpert box file ('train/patientX/studyY/view1_frontal.jpg')."""
    parts = Path(rel).parts
    for i, part in enumerate(parts):
        if part in ("train", "valid", "test"):
            return "/".join(parts[i:])
    return "/".join(parts)


def load_chexpert_csv(root: str | os.PathLike, csv: str = "valid.csv", uncertain: str = "zeros",
                      boxes_json: str | os.PathLike | None = None,
                      class_names: Sequence[str] | None = None, unknown: str = "error") -> LabelledSet:
    """CheXpert CSV: 1 positive, 0 or blank negative, -1 uncertain mapped by ``uncertain``:
    "zeros" (U-Zeros), "ones" (U-Ones) or "ignore" (label 0 with ``label_weights`` 0 there).
    ``boxes_json``: {path: {class: [[xmin, ymin, xmax, ymax], ...]}} (HAM's CheXpert boxes);
    images that have boxes there are ``box_supervised``."""
    if uncertain not in ("zeros", "ones", "ignore"):
        raise DataError(f"uncertain must be zeros, ones or ignore, not {uncertain!r}")
    root = Path(root)
    class_names = tuple(class_names or CHEXPERT_CLASSES)
    match = _ClassMatcher(class_names, unknown)
    csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
    rows = _read_csv(csv_path, ["Path"])
    header = list(rows[0].keys()) if rows else []
    columns: dict[int, str] = {}
    for col in header:
        if col in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") or _key(col) == NO_FINDING:
            continue
        i = match(col)
        if i is not None:
            columns[i] = col
    match.missing.clear()  # extra CSV columns are fine: the caller picked its classes
    absent = [class_names[i] for i in range(len(class_names)) if i not in columns]
    if absent:
        raise DataError(f"{csv_path}: no column for class(es) {', '.join(absent)}")
    box_data = _read_json(Path(boxes_json)) if boxes_json else {}
    box_by_key = {_box_key(k): v for k, v in box_data.items()}
    records = []
    for row in rows:
        labels = np.zeros(len(class_names), np.float32)
        weights = np.ones(len(class_names), np.float32)
        for i, col in columns.items():
            value = (row.get(col) or "").strip()
            try:
                v = float(value) if value else 0.0
            except ValueError:
                raise DataError(f"{csv_path}: bad value {value!r} in column {col!r}") from None
            if v == -1:
                labels[i] = 1.0 if uncertain == "ones" else 0.0
                weights[i] = 0.0 if uncertain == "ignore" else 1.0
            elif v not in (0.0, 1.0):
                raise DataError(f"{csv_path}: bad value {value!r} in column {col!r} (1, 0, -1 or blank)")
            else:
                labels[i] = v
        rel = row["Path"]
        raw_boxes = box_by_key.get(_box_key(rel))
        boxes = _boxes(raw_boxes, match, True, f"{boxes_json} [{rel}]") if raw_boxes else {}
        records.append(Record(_box_key(rel), _chexpert_path(root, rel), labels, boxes,
                              raw_boxes is not None, weights if uncertain == "ignore" else None))
    match.finish(str(boxes_json))
    return LabelledSet(root, class_names, records)


# ---------------------------------------------------------------------------------------------
# Auto-detection


def load_dataset(root: str | os.PathLike, split: str | None = "test",
                 class_names: Sequence[str] | None = None, unknown: str = "error") -> LabelledSet:
    """Read whatever layout ``root`` holds (NIH layout, NIH CSVs, CheXpert CSV folder or file)."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        with open(root, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
        if "Path" in header:
            return load_chexpert_csv(root.parent, root.name, class_names=class_names, unknown=unknown)
        if "Image Index" in header:
            return load_nih_csv(root.parent, root.name, split=None, class_names=class_names, unknown=unknown)
        raise DataError(f"{root}: neither a CheXpert nor an NIH CSV (no 'Path' or 'Image Index' column)")
    if not root.is_dir():
        raise DataError(f"{root}: no such data set folder")
    if (root / "Annotations" / "Tags.json").is_file():
        return load_nih_layout(root, split, class_names, unknown)
    if (root / "Data_Entry_2017.csv").is_file():
        return load_nih_csv(root, split=split, class_names=class_names, unknown=unknown)
    chexpert = {"train": "train.csv", "val": "valid.csv", "valid": "valid.csv", "test": "valid.csv"}
    if (root / "valid.csv").is_file() or (root / "train.csv").is_file():
        name = chexpert.get(split or "test")
        if name is None or not (root / name).is_file():
            raise DataError(f"{root}: CheXpert folder has no CSV for split {split!r}")
        boxes = next((b for b in (root / "BBoxes.json", root / "Annotations" / "BBoxes.json") if b.is_file()), None)
        return load_chexpert_csv(root, name, boxes_json=boxes, class_names=class_names, unknown=unknown)
    raise DataError(f"{root}: no known data set layout (Annotations/Tags.json, Data_Entry_2017.csv, "
                    "or CheXpert train.csv/valid.csv)")


# ---------------------------------------------------------------------------------------------
# Box masks and sampling


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def image_size(record: Record) -> tuple[int, int]:
    """(height, width) of the record's image, read from the file header where possible."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(record.path) as pil:
            return pil.size[1], pil.size[0]
    except (UnidentifiedImageError, OSError):
        from hamedge.io import read_image

        return read_image(record.path).shape  # DICOM and friends


def rect_mask(rects: Iterable[Rect], hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 0/1: the union of ``rects`` drawn at full resolution, as the reference draws
    them (pixels int(x) .. int(x + w) - 1, clipped to the image)."""
    mask = np.zeros(hw, np.uint8)
    for x, y, bw, bh in rects:
        x0, y0 = max(int(x), 0), max(int(y), 0)
        mask[y0:max(int(y + bh), 0), x0:max(int(x + bw), 0)] = 1
    return mask


def box_mask(record: Record, cls: int | str, out_size: int | Sequence[int],
             image_size_hw: int | Sequence[int] | None = None, class_names: Sequence[str] | None = None) -> np.ndarray:
    """uint8 0/1 mask of class ``cls`` at ``out_size`` (int or (h, w)).

    As the reference: the union of the class's boxes is drawn at the image's full resolution
    (pixels int(x) .. int(x + w) - 1), then resized with nearest-neighbour (Pillow NEAREST).
    ``cls`` is a name or an index into ``class_names`` (needed for an index).
    """
    from PIL import Image

    if not isinstance(cls, str):
        if class_names is None:
            raise DataError("box_mask needs class_names to resolve a class index")
        cls = class_names[int(cls)]
    out_h, out_w = _pair(out_size)
    boxes = record.boxes.get(cls, [])
    if not boxes:
        return np.zeros((out_h, out_w), np.uint8)
    h, w = _pair(image_size_hw) if image_size_hw is not None else image_size(record)
    full = rect_mask(boxes, (h, w))
    if (h, w) == (out_h, out_w):
        return full
    return np.asarray(Image.fromarray(full, "L").resize((out_w, out_h), Image.NEAREST))


def stratified_sample(records: Sequence[Record], n: int, seed: int = 0) -> list[Record]:
    """``n`` records drawn so every label combination keeps its share (largest remainder),
    seeded; returned in their original order. Used for calibration sets."""
    if n >= len(records):
        return list(records)
    if n <= 0:
        return []
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[tuple(np.flatnonzero(r.labels > 0).tolist())].append(i)
    keys = sorted(groups)
    total = len(records)
    quotas = {k: n * len(groups[k]) / total for k in keys}
    take = {k: int(quotas[k]) for k in keys}
    rest = n - sum(take.values())
    for k in sorted(keys, key=lambda k: (-(quotas[k] - take[k]), -len(groups[k]), k))[:rest]:
        take[k] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in keys:
        idx = np.asarray(groups[k])
        chosen.extend(int(i) for i in rng.permutation(idx)[:take[k]])
    return [records[i] for i in sorted(chosen)]
