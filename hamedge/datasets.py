"""Labelled chest X-ray sets on disk -> ``LabelledSet`` of ``Record``s. No torch.

``load_dataset(root, split, ...)`` is the one entry point every ``--data`` option goes through
(train, evaluate, export --calib/--val, bench). It recognises:
- NIH ChestX-ray14 as downloaded: Data_Entry_2017_v2020.csv (or the older Data_Entry_2017.csv),
  BBox_List_2017.csv, train_val_list.txt, test_list.txt, and the images in images/ or in the
  images_001 .. images_012 folders the archives unpack to (each may hold an images/ folder);
- CheXpert v1.0 and v1.0-small: train.csv / valid.csv (the folder itself or its parent), uncertain
  labels mapped by the policies of the literature (zeros, ones, ignore), lateral views dropped;
- the HAM reference repository's layout, which ``hamedge synth`` also writes (images/,
  Annotations/Tags.json, Annotations/BBoxes.json, ImageSets/{Main,bbox}/<list>.txt);
- a single NIH or CheXpert CSV file.

Splits (``split``): "test" is the official test list (NIH test_list.txt, CheXpert valid.csv,
ImageSets/Main/test.txt); "train" and "val" are the layout's own lists where it has them, else
carved from the official training list BY PATIENT (NIH's Patient ID column, CheXpert's patient
folder), seeded by ``split_seed``, so no patient is in both; "trainval" is the whole training list;
"all" (or None) every labelled image. A name ending in .txt (or a path) is an image list, looked up
under ImageSets/Main/, ImageSets/bbox/ and the root, as the reference configs name them.

Partial downloads: listed images without a file are dropped with one ``DataWarning`` line saying
how many (``require_all=True`` refuses instead); none present at all is an error.

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
from typing import Any

import numpy as np

from hamedge.errors import DataError, HamedgeWarning
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
# The NIH release's file names: the label CSV has been renamed once (v2020 is what NIH ships now).
NIH_DATA_ENTRY = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_BBOX_CSV = "BBox_List_2017.csv"
NIH_TRAIN_LIST, NIH_TEST_LIST = "train_val_list.txt", "test_list.txt"
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
DEFAULT_VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test", "trainval", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# An annotated box: (x, y, w, h) floats in the pixels of the image file. (hamedge.heatmap.Box is a
# different thing: a region found in a heatmap, with its score and area.)
Rect = tuple[float, float, float, float]


class DataWarning(HamedgeWarning):
    """Something about a data set the user should know, in one line (dropped rows, ignored classes)."""


@dataclass
class Record:
    """One labelled image."""

    name: str
    path: Path
    labels: np.ndarray  # float32 multi-hot over the set's class_names
    boxes: dict[str, list[Rect]] = field(default_factory=dict)  # class -> [(x, y, w, h)] in image pixels
    box_supervised: bool = False  # its boxes may supervise training / are the evaluation boxes
    label_weights: np.ndarray | None = None  # CheXpert uncertain="ignore": 0 where a label is unknown
    patient: str | None = None  # patient identifier where the data set has one

    @property
    def is_normal(self) -> bool:
        return not bool(np.any(self.labels > 0))

    @property
    def group(self) -> str:
        """What must never be split across train/val/test: the patient, else the image."""
        return f"patient:{self.patient}" if self.patient is not None else f"image:{self.name}"


@dataclass
class LabelledSet:
    root: Path
    class_names: tuple[str, ...]
    records: list[Record]
    info: dict[str, Any] = field(default_factory=dict)  # layout, split rule, counts (JSON-able)

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
        return LabelledSet(self.root, self.class_names, list(records), dict(self.info))

    def with_boxes(self) -> "LabelledSet":
        """The records whose boxes are the evaluation / supervision boxes."""
        return self.subset(r for r in self.records if r.box_supervised and r.boxes)


_NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.png$")
_CHEXPERT_PATIENT = re.compile(r"^patient\d+$")


def nih_patient(name: str) -> str | None:
    """NIH names images <patient id, 8 digits>_<follow-up, 3 digits>.png."""
    match = _NIH_NAME.match(Path(name).name)
    return str(int(match.group(1))) if match else None


def _warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


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
        warnings.warn(f"{where}: ignored labels/boxes of classes not in the class list: {names}",
                      DataWarning, stacklevel=3)


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
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _is_list_name(split: str) -> bool:
    return split.endswith(".txt") or "/" in split or os.sep in split


def find_list(root: Path, name: str, kinds: Sequence[str] = ("Main", "bbox")) -> Path:
    """An image list named as the reference configs name them ('fold1/train_0.5_0.8.txt'):
    under ImageSets/<kind>/ for each kind, then the data folder, then the path as given."""
    given = Path(name)
    candidates = [] if given.is_absolute() else [root / "ImageSets" / k / name for k in kinds]
    candidates += [] if given.is_absolute() else [root / name]
    candidates.append(given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = ", ".join(f"ImageSets/{k}/" for k in kinds)
    raise DataError(f"image list {name!r} not found under {root} ({where} or the folder itself)")


# ---------------------------------------------------------------------------------------------
# Splits


def split_by_patient(records: Sequence[Record], val_fraction: float, seed: int
                     ) -> tuple[list[Record], list[Record]]:
    """(train, val): whole patients (``Record.group``) drawn in a seeded order into val until it
    holds ``val_fraction`` of the images. Both keep the records' order. The draw depends only on
    the patients and the seed, not on which image files are present."""
    groups: dict[str, int] = Counter(r.group for r in records)
    keys = sorted(groups)
    target = round(val_fraction * len(records))
    val_keys: set[str] = set()
    taken = 0
    for i in np.random.default_rng(seed).permutation(len(keys)):
        if taken >= target:
            break
        val_keys.add(keys[i])
        taken += groups[keys[i]]
    train = [r for r in records if r.group not in val_keys]
    val = [r for r in records if r.group in val_keys]
    if not train or not val:
        raise DataError(f"cannot carve a validation split of {val_fraction:g} by patient from "
                        f"{len(records)} image(s) of {len(keys)} patient(s)")
    return train, val


def check_disjoint(splits: dict[str, Iterable[Record]]) -> None:
    """A patient (or, without patient ids, an image) in two splits is an error naming both."""
    owner: dict[str, str] = {}
    clashes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for split, records in splits.items():
        for group in sorted({r.group for r in records}):
            first = owner.setdefault(group, split)
            if first != split:
                clashes[(first, split)].append(group)
    if clashes:
        (a, b), groups = next(iter(clashes.items()))
        kind, _, example = groups[0].partition(":")
        raise DataError(f"splits {a!r} and {b!r} share {len(groups)} {kind}(s), e.g. {kind} "
                        f"{example}: a patient must be in one split only "
                        "(--allow-patient-overlap accepts such lists as they are)")


def _count_files(records: Sequence[Record], source: str, info: dict) -> None:
    """Record how many rows of the whole labels file have no image file: the partial-download
    warning names this count, which is the same for every split read from that file."""
    info["source_rows"] = len(records)
    info["source_missing"] = sum(1 for r in records if not r.path.is_file())
    info["source"] = source


def _keep_present(records: list[Record], where: str, require_all: bool, info: dict) -> list[Record]:
    """Drop records without an image file (partial downloads), with one warning line."""
    absent = sum(1 for r in records if not r.path.is_file())
    info["missing_files"] = absent
    if not absent:
        return records
    if require_all:
        raise DataError(f"{where}: {absent} of {len(records)} listed image(s) have no file, e.g. "
                        f"{next(r.name for r in records if not r.path.is_file())} "
                        "(without --require-all the images present are used)")
    if absent == len(records):
        raise DataError(f"{where}: none of the {len(records)} listed images has a file "
                        f"(e.g. {records[0].path})")
    if "source_rows" in info:  # the same text for every split: Python shows it once
        _warn(f"{info['source']}: {info['source_missing']} of {info['source_rows']} rows have no "
              "image file (partial download?); the images present are used")
    else:
        _warn(f"{where}: {absent} of {len(records)} rows have no image file (partial download?); "
              f"using the {len(records) - absent} present")
    return [r for r in records if r.path.is_file()]


def _select(records: Sequence[Record], names: Sequence[str], where: str) -> list[Record]:
    by_name = {r.name: r for r in records}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DataError(f"{where}: no labels for {len(unknown)} listed image(s), e.g. {unknown[0]}")
    return [by_name[n] for n in dict.fromkeys(names)]


def _official_split(records: list[Record], split: str, train_list: list[str] | None,
                    test_list: list[str] | None, sources: tuple[str, str], val_fraction: float,
                    seed: int, info: dict) -> list[Record]:
    """test / trainval from the official lists, train / val carved from trainval by patient."""
    if split == "test":
        if test_list is None:
            raise DataError(f"no test list ({sources[1]})")
        info["split_rule"] = f"official test list {sources[1]}"
        return _select(records, test_list, sources[1])
    if train_list is None:
        raise DataError(f"split {split!r} needs the training list {sources[0]}")
    trainval = _select(records, train_list, sources[0])
    if split == "trainval":
        info["split_rule"] = f"official training list {sources[0]}"
        return trainval
    train, val = split_by_patient(trainval, val_fraction, seed)
    info["split_rule"] = (f"{sources[0]} split by patient: val_fraction {val_fraction:g}, "
                          f"seed {seed}")
    info["val_patients"] = len({r.group for r in val})
    info["train_patients"] = len({r.group for r in train})
    return train if split == "train" else val


# ---------------------------------------------------------------------------------------------
# NIH / HAM reference layout


def _layout_classes(root: Path, class_names: Sequence[str] | None) -> tuple[str, ...]:
    if class_names is not None:
        return tuple(class_names)
    info = root / "dataset.json"
    if info.is_file():
        data = _read_json(info)
        if isinstance(data, dict) and data.get("classes"):
            return tuple(data["classes"])
    return NIH_CLASSES


def _load_layout(root: Path, split: str, class_names, unknown: str, val_fraction: float,
                 seed: int, info: dict) -> LabelledSet:
    tags_path = root / "Annotations" / "Tags.json"
    class_names = _layout_classes(root, class_names)
    match = _ClassMatcher(class_names, unknown)
    tags = _read_json(tags_path)
    if not isinstance(tags, dict):
        raise DataError(f"{tags_path}: expected {{image: labels}}")
    boxes_path = root / "Annotations" / "BBoxes.json"
    all_boxes = _read_json(boxes_path) if boxes_path.is_file() else {}
    if not isinstance(all_boxes, dict):
        raise DataError(f"{boxes_path}: expected {{image: {{class: boxes}}}}")
    records = []
    for name in sorted(tags):
        labels = _multi_hot(_split_labels(tags[name]), match)
        boxes = _boxes(all_boxes.get(name, {}), match, corners=False, where=f"{boxes_path} [{name}]")
        records.append(Record(name, root / "images" / name, labels, boxes, False, None,
                              nih_patient(name)))
    match.finish(str(root))
    _count_files(records, str(root / "Annotations" / "Tags.json"), info)
    info["layout"] = "synthetic" if (root / "dataset.json").is_file() else "nih-layout"
    main, bbox = root / "ImageSets" / "Main", root / "ImageSets" / "bbox"

    box_names: set[str] | None = None
    if split == "all":
        chosen = records
        info["split_rule"] = "every image in Annotations/Tags.json"
    elif _is_list_name(split):
        path = find_list(root, split, ("Main",))
        chosen = _select(records, read_list(path), str(path))
        info["split_rule"] = f"image list {path}"
        if (bbox / split).is_file():
            box_names = set(read_list(bbox / split))
    elif (main / f"{split}.txt").is_file():
        path = main / f"{split}.txt"
        chosen = _select(records, read_list(path), str(path))
        info["split_rule"] = f"image list {path}"
        box_names = set(read_list(bbox / f"{split}.txt")) if (bbox / f"{split}.txt").is_file() else set()
    elif split in ("train", "val", "trainval", "test") and (
            (main / NIH_TRAIN_LIST).is_file() or (main / NIH_TEST_LIST).is_file()):
        # The reference repository keeps NIH's official lists under ImageSets/Main.
        lists = [read_list(main / n) if (main / n).is_file() else None
                 for n in (NIH_TRAIN_LIST, NIH_TEST_LIST)]
        chosen = _official_split(records, split, lists[0], lists[1],
                                 (f"ImageSets/Main/{NIH_TRAIN_LIST}", f"ImageSets/Main/{NIH_TEST_LIST}"),
                                 val_fraction, seed, info)
        if split == "test" and (bbox / "test_bboxs.txt").is_file():
            box_names = set(read_list(bbox / "test_bboxs.txt"))
    else:
        have = sorted(p.stem for p in main.glob("*.txt")) if main.is_dir() else []
        raise DataError(f"{root}: no split {split!r} (ImageSets/Main/{split}.txt); "
                        f"splits here: {', '.join(have) or 'none'}")
    for r in chosen:
        r.box_supervised = bool(r.boxes) if box_names is None else r.name in box_names
    return LabelledSet(root, tuple(class_names), chosen, info)


def load_nih_layout(root: str | os.PathLike, split: str | None = "test",
                    class_names: Sequence[str] | None = None, unknown: str = "error",
                    require_all: bool = False) -> LabelledSet:
    """Read the NIH/HAM layout (see load_dataset). Records listed in ImageSets/bbox/<split>.txt
    are ``box_supervised`` (for split "all": every image that has boxes). Class names default to
    dataset.json's "classes", else the NIH 14."""
    root = Path(root)
    if not (root / "Annotations" / "Tags.json").is_file():
        raise DataError(f"{root}: not an NIH-layout data set (no Annotations/Tags.json)")
    return load_dataset(root, split, class_names, unknown, require_all=require_all)


# ---------------------------------------------------------------------------------------------
# NIH original release (CSVs)


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{path}: invalid CSV ({exc})") from None
    lost = [c for c in required if c not in header]
    if lost:
        raise DataError(f"{path}: missing column(s) {', '.join(repr(c) for c in lost)}")
    return rows


def nih_image_folders(root: Path) -> list[Path]:
    """images/ and images_001 .. images_012 (each may hold the archive's own images/ folder);
    the data folder itself when it has none of them."""
    folders = []
    for folder in [root / "images", *sorted(root.glob("images_[0-9][0-9][0-9]"))]:
        if folder.is_dir():
            folders.append(folder)
            if (folder / "images").is_dir():
                folders.append(folder / "images")
    return folders or [root]


def _image_index(folders: Sequence[Path]) -> dict[str, Path]:
    """file name -> path over the folders (not recursive: NIH's 112,120 files stat quickly)."""
    index: dict[str, Path] = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    index.setdefault(entry.name, Path(entry.path))
    return index


def nih_data_entry(root: Path) -> Path | None:
    return next((root / n for n in NIH_DATA_ENTRY if (root / n).is_file()), None)


def _read_nih_release(csv_path: Path, class_names, unknown: str, bbox_csv: Path | None
                      ) -> list[Record]:
    root = csv_path.parent
    match = _ClassMatcher(class_names, unknown)
    rows = _read_csv(csv_path, ["Image Index", "Finding Labels"])
    boxes: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    if bbox_csv is not None and bbox_csv.is_file():
        # NIH's header is 'Image Index,Finding Label,Bbox [x,y,w,h],,,': the bracket splits.
        columns = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
        for row in _read_csv(bbox_csv, columns):
            try:
                box = [float(row[c]) for c in columns[2:]]
            except (TypeError, ValueError):
                raise DataError(f"{bbox_csv}: bad box numbers for {row['Image Index']}") from None
            boxes[row["Image Index"].strip()][row["Finding Label"].strip()].append(box)
    paths = _image_index(nih_image_folders(root))
    default_folder = root / "images"
    records = []
    for row in rows:
        name = (row["Image Index"] or "").strip()
        if not name:
            continue
        labels = _multi_hot(_split_labels(row["Finding Labels"]), match)
        rec_boxes = _boxes(boxes.get(name, {}), match, False, f"{bbox_csv} [{name}]")
        patient = (row.get("Patient ID") or "").strip()
        patient = str(int(patient)) if patient.isdigit() else (patient or nih_patient(name))
        records.append(Record(name, paths.get(name, default_folder / name), labels, rec_boxes,
                              name in boxes, None, patient))
    match.finish(str(csv_path))
    return records


def _load_nih_release(root: Path, csv_path: Path, split: str, class_names, unknown: str,
                      val_fraction: float, seed: int, info: dict) -> LabelledSet:
    class_names = tuple(class_names or NIH_CLASSES)
    records = _read_nih_release(csv_path, class_names, unknown, root / NIH_BBOX_CSV)
    _count_files(records, str(csv_path), info)
    info.update(layout="nih-release", labels=csv_path.name,
                image_folders=[str(p.relative_to(root)) if p != root else "."
                               for p in nih_image_folders(root)])
    if split == "all":
        chosen = records
        info["split_rule"] = f"every row of {csv_path.name}"
    elif _is_list_name(split):
        path = find_list(root, split, ("Main",))
        chosen = _select(records, read_list(path), str(path))
        info["split_rule"] = f"image list {path}"
    else:
        lists = [read_list(root / n) if (root / n).is_file() else None
                 for n in (NIH_TRAIN_LIST, NIH_TEST_LIST)]
        chosen = _official_split(records, split, lists[0], lists[1], (NIH_TRAIN_LIST, NIH_TEST_LIST),
                                 val_fraction, seed, info)
    return LabelledSet(root, class_names, chosen, info)


def load_nih_csv(root: str | os.PathLike, csv: str | None = None,
                 bbox_csv: str | None = NIH_BBOX_CSV, split: str | None = None,
                 class_names: Sequence[str] | None = None,
                 unknown: str = "error") -> LabelledSet:
    """Every row (``split`` None) or a split of NIH's release; see load_dataset. ``csv`` defaults
    to the Data_Entry file present. Images listed in the box CSV are ``box_supervised``."""
    root = Path(root)
    csv_path = root / csv if csv else nih_data_entry(root)
    if csv_path is None or not csv_path.is_file():
        raise DataError(f"{root}: no {' or '.join(NIH_DATA_ENTRY)}")
    if split is None or split == "all":
        records = _read_nih_release(csv_path, tuple(class_names or NIH_CLASSES), unknown,
                                    root / bbox_csv if bbox_csv else None)
        return LabelledSet(root, tuple(class_names or NIH_CLASSES), records,
                           {"layout": "nih-release", "split_rule": f"every row of {csv_path.name}"})
    return load_dataset(root, split, class_names, unknown)


# ---------------------------------------------------------------------------------------------
# CheXpert


def chexpert_root(root: Path) -> Path | None:
    """The folder holding CheXpert's train.csv / valid.csv: ``root`` or its CheXpert-v1.0[-small]."""
    for candidate in (root, root / "CheXpert-v1.0-small", root / "CheXpert-v1.0"):
        if (candidate / "train.csv").is_file() or (candidate / "valid.csv").is_file():
            return candidate
    return None


def _chexpert_path(root: Path, rel: str) -> Path:
    """CheXpert's Path column starts with the release folder name (CheXpert-v1.0[-small]/...)."""
    rel_path = Path(rel)
    inner = root / Path(*rel_path.parts[1:]) if len(rel_path.parts) > 1 else root / rel_path
    for candidate in (root.parent / rel_path, inner, root / rel_path):
        if candidate.is_file():
            return candidate
    return inner


def _box_key(rel: str) -> str:
    """Key of HAM's CheXpert box file ('train/patientX/studyY/view1_frontal.jpg')."""
    parts = Path(rel).parts
    for i, part in enumerate(parts):
        if part in ("train", "valid", "test"):
            return "/".join(parts[i:])
    return "/".join(parts)


def _chexpert_patient(rel: str) -> str | None:
    return next((p for p in Path(rel).parts if _CHEXPERT_PATIENT.match(p)), None)


def load_chexpert_csv(root: str | os.PathLike, csv: str = "valid.csv", uncertain: str = "zeros",
                      boxes_json: str | os.PathLike | None = None,
                      class_names: Sequence[str] | None = None, unknown: str = "error",
                      frontal_only: bool = False) -> LabelledSet:
    """CheXpert CSV: 1 positive, 0 or blank negative, -1 uncertain mapped by ``uncertain``:
    "zeros" (U-Zeros), "ones" (U-Ones) or "ignore" (label 0 with ``label_weights`` 0 there).
    ``boxes_json``: {path: {class: [[xmin, ymin, xmax, ymax], ...]}} (HAM's CheXpert boxes);
    images that have boxes there are ``box_supervised``. ``frontal_only`` leaves out the rows
    whose Frontal/Lateral column says Lateral."""
    if uncertain not in UNCERTAIN_POLICIES:
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
    records, lateral = [], 0
    for row in rows:
        if frontal_only and (row.get("Frontal/Lateral") or "").strip().lower() == "lateral":
            lateral += 1
            continue
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
                              raw_boxes is not None, weights if uncertain == "ignore" else None,
                              _chexpert_patient(rel)))
    match.finish(str(boxes_json))
    info = {"layout": "chexpert", "labels": csv_path.name, "uncertain": uncertain}
    if lateral:
        info["lateral_left_out"] = lateral
        _warn(f"{csv_path}: {lateral} lateral view(s) left out (HAM reads frontal radiographs)")
    return LabelledSet(root, class_names, records, info)


def _load_chexpert(root: Path, split: str, class_names, unknown: str, uncertain: str,
                   val_fraction: float, seed: int, info: dict) -> LabelledSet:
    boxes = next((b for b in (root / "BBoxes.json", root / "Annotations" / "BBoxes.json",
                              root.parent / "BBoxes.json") if b.is_file()), None)

    def read(name: str) -> LabelledSet:
        if not (root / name).is_file():
            raise DataError(f"{root}: split {split!r} needs CheXpert's {name}")
        return load_chexpert_csv(root, name, uncertain, boxes, class_names, unknown, frontal_only=True)

    if split in ("test", "valid"):
        labelled = read("valid.csv")
        labelled.info["split_rule"] = "CheXpert valid.csv (the official labelled hold-out)"
    elif split == "all":
        parts = [read(n) for n in ("train.csv", "valid.csv") if (root / n).is_file()]
        labelled = parts[0].subset([r for p in parts for r in p.records])
        labelled.info["split_rule"] = "every frontal row of train.csv and valid.csv"
    elif split in ("train", "val", "trainval"):
        labelled = read("train.csv")
        chosen = _official_split(labelled.records, split, [r.name for r in labelled.records],
                                 None, ("train.csv", "valid.csv"), val_fraction, seed, labelled.info)
        labelled = labelled.subset(chosen)
    else:
        path = find_list(root, split, ("Main",))
        whole = read("train.csv") if (root / "train.csv").is_file() else read("valid.csv")
        labelled = whole.subset(_select(whole.records, read_list(path), str(path)))
        labelled.info["split_rule"] = f"image list {path}"
    labelled.info.update(info)
    if boxes is not None:
        labelled.info["boxes"] = str(boxes)
    return labelled


# ---------------------------------------------------------------------------------------------
# The one entry point


def detect_layout(root: Path) -> str:
    """'nih-layout', 'nih-release' or 'chexpert' for a data folder (DataError otherwise)."""
    if (root / "Annotations" / "Tags.json").is_file():
        return "nih-layout"
    if nih_data_entry(root) is not None:
        return "nih-release"
    if chexpert_root(root) is not None:
        return "chexpert"
    raise DataError(f"{root}: no known data set layout: expected NIH's {' or '.join(NIH_DATA_ENTRY)}, "
                    "CheXpert's train.csv/valid.csv, or the reference layout's Annotations/Tags.json")


def check_data_options(split: str | None = "test", uncertain: str = "zeros",
                       val_fraction: float = DEFAULT_VAL_FRACTION) -> None:
    """The options of load_dataset, checked before any file is read (one-line errors)."""
    if split is not None and (not isinstance(split, str) or not split.strip()):
        raise DataError(f"a split is a name ({', '.join(SPLITS)}) or an image list, not {split!r}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise DataError(f"uncertain must be {', '.join(UNCERTAIN_POLICIES)}, not {uncertain!r}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise DataError(f"the validation fraction must lie strictly between 0 and 1, not {val_fraction!r}")


def load_dataset(root: str | os.PathLike, split: str | None = "test",
                 class_names: Sequence[str] | None = None, unknown: str = "error", *,
                 uncertain: str = "zeros", require_all: bool = False,
                 val_fraction: float = DEFAULT_VAL_FRACTION, split_seed: int = 0,
                 box_list: str | os.PathLike | None = None) -> LabelledSet:
    """Read a split of whatever layout ``root`` holds (see the module notes). ``box_list``: an
    image list (ImageSets/bbox/...) naming the records whose boxes count (``box_supervised``),
    instead of the layout's own rule. The result's ``info`` says what was read and how."""
    check_data_options(split, uncertain, val_fraction)
    root = Path(root)
    split = "all" if split is None else split.strip()
    info: dict[str, Any] = {"root": str(root), "split": split}
    if root.is_file():
        labelled = _load_csv_file(root, split, class_names, unknown, uncertain, info)
    elif not root.is_dir():
        raise DataError(f"{root}: no such data set folder")
    else:
        layout = detect_layout(root)
        if layout == "nih-layout":
            labelled = _load_layout(root, split, class_names, unknown, val_fraction, split_seed, info)
        elif layout == "nih-release":
            labelled = _load_nih_release(root, nih_data_entry(root), split, class_names, unknown,
                                         val_fraction, split_seed, info)
        else:
            labelled = _load_chexpert(chexpert_root(root), split, class_names, unknown, uncertain,
                                      val_fraction, split_seed, info)
    if box_list is not None:
        base = labelled.root
        names = set(read_list(find_list(base, str(box_list), ("bbox", "Main"))))
        for r in labelled.records:
            r.box_supervised = r.name in names
        labelled.info["box_list"] = str(box_list)
    where = f"{root} [{split}]"
    labelled.records = _keep_present(labelled.records, where, require_all, labelled.info)
    labelled.info["images"] = len(labelled.records)
    labelled.info["patients"] = len({r.group for r in labelled.records})
    return labelled


def _load_csv_file(path: Path, split: str, class_names, unknown: str, uncertain: str,
                   info: dict) -> LabelledSet:
    """A CSV file is one split: all its rows."""
    if split not in ("all", "test"):
        raise DataError(f"{path} is a single CSV file, i.e. one split; pass its folder to choose "
                        f"split {split!r}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from None
    if "Path" in header:
        labelled = load_chexpert_csv(path.parent, path.name, uncertain, class_names=class_names,
                                     unknown=unknown, frontal_only=True)
    elif "Image Index" in header:
        labelled = load_nih_csv(path.parent, path.name, split=None, class_names=class_names,
                                unknown=unknown)
    else:
        raise DataError(f"{path}: neither a CheXpert nor an NIH CSV (no 'Path' or 'Image Index' column)")
    labelled.info.update(info, split_rule=f"every row of {path.name}")
    return labelled


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
