"""Calibration images: which X-rays, read and preprocessed by the one inference rule. No torch.

A folder is either a labelled data set (NIH layout, CSVs: hamedge.datasets), sampled stratified
by label, or a plain folder of PNG/JPEG/DICOM files, sampled with a seeded shuffle. Every image is
read with hamedge.io.read_image and preprocessed with hamedge.preprocess.preprocess (never a second
copy of either), and hashed, so calibration.json can say exactly which bytes set the INT8 ranges.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from hamedge.errors import DataError
from hamedge.fsutil import sha256_file
from hamedge.spec import ModelSpec

MIN_IMAGES = 8  # fewer: the ranges are noise; refuse
RECOMMENDED_IMAGES = 64  # fewer: allowed, with a warning
DEFAULT_COUNT = 128

# Default held-out data for the packaged demo model: synthetic images from seeds the training set
# never used (the demo model is trained on hamedge.synth data; see hamedge/assets).
SYNTH_CALIB_SEED = 90001
SYNTH_VAL_SEED = 90002


class CalibrationWarning(UserWarning):
    """Calibration went ahead but the user should know (too few images, unreadable files)."""


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs (N, C, S, S) float32 and where they came from."""

    inputs: np.ndarray
    paths: list[Path]
    sha256: list[str]
    selection: str  # "stratified" | "seeded-sample" | "all"
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batches(self, batch_size: int = 8) -> Iterator[np.ndarray]:
        for start in range(0, len(self), batch_size):
            yield self.inputs[start:start + batch_size]

    def describe(self) -> dict[str, Any]:
        """The calibration.json part: the images used and their hashes."""
        root = Path(self.source)
        images = []
        for path, digest in zip(self.paths, self.sha256):
            try:
                name = path.relative_to(root).as_posix()
            except ValueError:
                name = path.name
            images.append({"name": name, "sha256": digest})
        return {"source": self.source, "selection": self.selection, "count": len(self),
                "images": images, "skipped": [{"name": n, "reason": r} for n, r in self.skipped]}


def _is_labelled(root: Path) -> bool:
    return (root / "Annotations" / "Tags.json").is_file() or any(root.glob("*.csv"))


def _labelled_paths(root: Path, count: int, seed: int, split: str | None, exclude: set[Path]
                    ) -> tuple[list[Path], str] | None:
    """Stratified sample of a labelled set, or None when the folder is not one."""
    try:
        from hamedge.datasets import load_dataset, stratified_sample
    except ImportError:  # data-set reader not available: treat as a plain folder
        return None
    try:
        labelled = load_dataset(root, split=split)  # split None: every labelled image
    except DataError:
        return None
    records = [r for r in labelled.records if Path(r.path).resolve() not in exclude]
    if not records:
        return None
    if len(records) <= count:
        return [Path(r.path) for r in records], "all"
    return [Path(r.path) for r in stratified_sample(records, count, seed=seed)], "stratified"


def _folder_paths(root: Path) -> list[Path]:
    from hamedge.io import find_images

    paths, _skipped = find_images(root)
    return [Path(p) for p in paths]


def select_images(source: str | Path, count: int = DEFAULT_COUNT, seed: int = 0,
                  split: str | None = None, exclude: Iterable[Path] = ()
                  ) -> tuple[list[Path], str]:
    """Pick up to ``count`` image files from ``source``: (paths, how they were chosen).
    ``exclude``: files never to calibrate on (the accuracy guard's images)."""
    paths, how = _select(Path(source), count, seed, split, {Path(p).resolve() for p in exclude})
    return paths, how


def _select(root: Path, count: int, seed: int, split: str | None, exclude: set[Path]
            ) -> tuple[list[Path], str]:
    if not root.exists():
        raise DataError(f"calibration folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"calibration source {root} is not a folder")
    if count < MIN_IMAGES:
        raise DataError(f"--calib-count {count} is too few: INT8 calibration needs at least "
                        f"{MIN_IMAGES} images ({RECOMMENDED_IMAGES}+ recommended)")
    if _is_labelled(root):
        found = _labelled_paths(root, count, seed, split, exclude)
        if found:
            return found
    try:
        paths = sorted(p for p in _folder_paths(root) if p.resolve() not in exclude)
    except PermissionError as exc:
        raise DataError(f"cannot read calibration folder {root}: {exc.strerror}") from None
    if not paths:
        raise DataError(f"calibration folder {root} holds no PNG/JPEG/DICOM images")
    if len(paths) <= count:
        return paths, "all"
    order = np.random.default_rng(seed).permutation(len(paths))[:count]
    return [paths[i] for i in sorted(order)], "seeded-sample"


def load_calibration_set(source: str | Path, spec: ModelSpec, channels: int,
                         count: int = DEFAULT_COUNT, seed: int = 0, split: str | None = None,
                         exclude: Iterable[Path] = ()) -> CalibrationSet:
    """Select, read, preprocess and hash the calibration images. Unreadable files are skipped
    (and listed); too few readable images is an error, fewer than recommended a warning."""
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess

    paths, selection = select_images(source, count, seed, split, exclude)
    inputs, used, hashes, skipped = [], [], [], []
    for path in paths:
        try:
            image = read_image(path)
            inputs.append(np.asarray(preprocess(image, spec, channels), dtype=np.float32))
        except (DataError, OSError, ValueError) as exc:
            skipped.append((path.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        used.append(path)
        hashes.append(sha256_file(path))
    if len(used) < MIN_IMAGES:
        why = f" ({len(skipped)} unreadable, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"calibration needs at least {MIN_IMAGES} readable images; {source} gave "
                        f"{len(used)}{why}")
    notes = []
    if len(used) < RECOMMENDED_IMAGES:
        notes.append(f"only {len(used)} calibration images (at least {RECOMMENDED_IMAGES} "
                     "recommended): INT8 ranges may be noisy")
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable calibration file(s), e.g. "
                     f"{skipped[0][0]}: {skipped[0][1]}")
    for note in notes:
        warnings.warn(note, CalibrationWarning, stacklevel=2)
    return CalibrationSet(np.stack(inputs), used, hashes, selection, str(source), skipped, notes)


def synth_size(spec: ModelSpec) -> int:
    """Side of the synthetic images made for ``spec`` (its training data's size when recorded)."""
    return int(spec.extra.get("synth_size", max(spec.input_size, 256)))


def synthetic_heldout(spec: ModelSpec, count: int, seed: int, out_dir: str | Path,
                      size: int | None = None) -> Path:
    """Generate ``count`` synthetic held-out images (NIH layout, boxes on the val split) for the
    default model, from a seed its training data never used. Returns the data set folder."""
    from hamedge import synth

    size = size or synth_size(spec)
    # nearly everything in the test split (load_dataset's default); its images with findings get
    # box annotations, so the guard can measure localisation
    synth.generate(out_dir, count, seed, size=size, val_fraction=0.0, test_fraction=0.95,
                   box_fraction=0.0)
    return Path(out_dir)
