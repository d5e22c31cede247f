"""The results store of a folder run: results.csv + results.jsonl in --out, appended durably.

- Each batch's rows are appended to results.jsonl, then to results.csv, each flushed and fsync'd:
  a killed run loses at most the batch in flight.
- manifest.json (written atomically) records the model, classes and precision; resuming into the
  same folder with another model is refused.
- On start, existing rows are read back: a torn last line (a kill mid-write) is cut, and only paths
  present in both files count as done (a kill between the two appends leaves a row in one file
  only; it is dropped and that image is run again). The files are rewritten (atomically) only
  when something had to be repaired. So after any kill and resume there is exactly one row per
  input in each file. A CSV row with the wrong number of fields (a line cut inside a row that
  still ends in a newline) or a JSON line that does not parse counts as damaged the same way.
- The files always hold valid JSON: a record with a non-finite number (NaN, infinity) is turned
  into an error row before it is written (`safe_record`), and JSON is written with
  allow_nan=False.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from hamedge.errors import HamedgeError
from hamedge.fsutil import write_text

RESULTS_FORMAT = "hamedge-results/1"
CSV_NAME = "results.csv"
JSONL_NAME = "results.jsonl"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
HEATMAP_DIR = "heatmaps"

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_REFUSED = "refused"  # not a frontal chest radiograph (hamedge.gate): not run, not an error

# file names that are not valid UTF-8 (os.fsdecode gives them surrogate escapes) round-trip
# through the results files as their original bytes instead of failing the run
_TEXT = {"encoding": "utf-8", "errors": "surrogateescape"}


def csv_columns(class_names) -> list[str]:
    return ["path", "status", "reason", "anomaly", *class_names, "findings", "width", "height"]


def is_results_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding the results of a hamedge run (its manifest says so)."""
    manifest = Path(path) / MANIFEST_NAME
    try:
        if not manifest.is_file() or manifest.stat().st_size > 1 << 20:
            return False
        return json.loads(manifest.read_text(**_TEXT)).get("format") == RESULTS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _has_non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def safe_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record itself, or, when any number in it is NaN or infinite, an error row in its
    place (a result built on such numbers is not a result)."""
    if not _has_non_finite(record):
        return record
    keep = {k: record[k] for k in ("path", "width", "height") if k in record}
    return {**keep, "status": STATUS_ERROR,
            "reason": "the model gave non-finite outputs (NaN or infinity) for this image"}


def json_line(record: dict[str, Any]) -> str:
    """One record as one line of strict JSON (never a bare NaN)."""
    return json.dumps(safe_record(record), allow_nan=False) + "\n"


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _cut_torn_tail(path: Path) -> bool:
    """Cut a last line without its newline (a write interrupted by a kill). True when cut."""
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())
    return True


class ResultsStore:
    def __init__(self, out_dir: str | os.PathLike, manifest: dict[str, Any], class_names,
                 overwrite: bool = False) -> None:
        self.dir = Path(out_dir)
        self.class_names = list(class_names)
        self.columns = csv_columns(self.class_names)
        self.csv_path = self.dir / CSV_NAME
        self.jsonl_path = self.dir / JSONL_NAME
        self.manifest_path = self.dir / MANIFEST_NAME
        self.heatmap_dir = self.dir / HEATMAP_DIR
        if self.dir.exists() and not self.dir.is_dir():
            raise HamedgeError(f"--out {self.dir} exists and is not a folder")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        try:
            if overwrite:
                self._clear()
            self.manifest = dict(manifest, format=RESULTS_FORMAT)
            self._check_manifest()
            self.done: dict[str, str] = {}  # key -> status of rows already stored
            self._load()
            self._csv = open(self.csv_path, "a", newline="", **_TEXT)
            self._jsonl = open(self.jsonl_path, "a", **_TEXT)
        except BaseException:
            self._lock.close()  # a refused start must not keep the folder locked
            raise

    # -- start-up ------------------------------------------------------------------------------
    def _take_lock(self):
        """One run per results folder: a second concurrent run would append the same images.
        An advisory lock that the OS releases when the process dies (SIGKILL included)."""
        handle = open(self.dir / LOCK_NAME, "a+")
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock, as before
            pass
        except OSError:
            handle.close()
            raise HamedgeError(f"another hamedge infer is writing to {self.dir}; wait for it "
                               "or give another --out") from None
        return handle

    def _clear(self) -> None:
        for name in (CSV_NAME, JSONL_NAME, MANIFEST_NAME):
            (self.dir / name).unlink(missing_ok=True)
        if self.heatmap_dir.is_dir():
            shutil.rmtree(self.heatmap_dir)

    def _check_manifest(self) -> None:
        if self.manifest_path.is_file():
            try:
                old = json.loads(self.manifest_path.read_text(**_TEXT))
            except (OSError, json.JSONDecodeError):
                old = {}
            for key in ("format", "model_id", "classes", "precision", "gate"):
                if old.get(key) != self.manifest.get(key):
                    raise HamedgeError(
                        f"{self.dir} holds results of another run ({key} differs: "
                        f"{old.get(key)!r} there, {self.manifest.get(key)!r} now); "
                        "use --overwrite to start afresh or choose another --out")
        elif self.csv_path.exists() or self.jsonl_path.exists():
            raise HamedgeError(f"{self.dir} has results but no {MANIFEST_NAME}; "
                               "use --overwrite or another --out")
        else:
            write_text(self.manifest_path,
                       json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")

    def _read_csv(self) -> list[dict[str, str]]:
        if not self.csv_path.is_file() or self.csv_path.stat().st_size == 0:
            return []
        with open(self.csv_path, newline="", **_TEXT) as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != self.columns:
                raise HamedgeError(f"{self.csv_path} has other columns than this model's; "
                                   "use --overwrite or another --out")
            # a short row (a line cut inside it) gets None values, a long one a None key
            return [row for row in reader if row.get("path") and None not in row
                    and all(value is not None for value in row.values())]

    def _read_jsonl(self) -> list[dict[str, Any]]:
        if not self.jsonl_path.is_file():
            return []
        rows = []
        with open(self.jsonl_path, **_TEXT) as handle:
            for line in handle:
                try:
                    row = json.loads(line, parse_constant=_reject_constant)
                except ValueError:
                    continue  # only a damaged line can fail; it is dropped and re-run
                if isinstance(row, dict) and "path" in row:
                    rows.append(row)
        return rows

    def _sweep_temp_files(self) -> None:
        """Remove temporary files of atomic writes cut short by a kill (ours: '.<name>.*.tmp')."""
        folders = [self.dir] + ([self.heatmap_dir] if self.heatmap_dir.is_dir() else [])
        for folder in folders:
            pattern = "**/.*.tmp" if folder == self.heatmap_dir else ".*.tmp"
            for path in folder.glob(pattern):
                if path.is_file():
                    path.unlink(missing_ok=True)

    def _load(self) -> None:
        self._sweep_temp_files()
        repaired = False
        for path in (self.csv_path, self.jsonl_path):
            if path.is_file():
                repaired |= _cut_torn_tail(path)
        csv_rows, json_rows = self._read_csv(), self._read_jsonl()
        common = {r["path"] for r in csv_rows} & {r["path"] for r in json_rows}
        keep_csv = self._dedupe(csv_rows, common)
        keep_json = self._dedupe(json_rows, common)
        if len(keep_csv) != len(csv_rows) or len(keep_json) != len(json_rows) or repaired \
                or not self.csv_path.is_file():
            self._rewrite(keep_csv, keep_json)
        self.done = {r["path"]: r["status"] for r in keep_csv}

    @staticmethod
    def _dedupe(rows, keys) -> list:
        seen, out = set(), []
        for row in rows:
            if row["path"] in keys and row["path"] not in seen:
                seen.add(row["path"])
                out.append(row)
        return out

    def _rewrite(self, csv_rows, json_rows) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_rows)
        write_text(self.csv_path, buffer.getvalue())
        write_text(self.jsonl_path, "".join(json_line(r) for r in json_rows))

    # -- appending -----------------------------------------------------------------------------
    def csv_row(self, record: dict[str, Any]) -> dict[str, Any]:
        probs = record.get("probabilities") or {}
        ok = record["status"] == STATUS_OK
        return {
            "path": record["path"],
            "status": record["status"],
            "reason": record.get("reason", ""),
            "anomaly": f"{record['anomaly']:.6f}" if ok else "",
            **{name: (f"{probs[name]:.6f}" if ok else "") for name in self.class_names},
            "findings": ";".join(record.get("findings", [])),
            "width": record.get("width", ""),
            "height": record.get("height", ""),
        }

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append one batch of records (dicts with at least path, status), durably."""
        if not records:
            return
        records = [safe_record(r) for r in records]
        for record in records:
            record["reason"] = _one_line(record.get("reason", ""))
        self._jsonl.write("".join(json_line(r) for r in records))
        self._sync(self._jsonl)
        buffer = io.StringIO()
        csv.DictWriter(buffer, self.columns, lineterminator="\n").writerows(
            self.csv_row(r) for r in records)
        self._csv.write(buffer.getvalue())
        self._sync(self._csv)
        for record in records:
            self.done[record["path"]] = record["status"]

    @staticmethod
    def _sync(handle) -> None:
        handle.flush()
        os.fsync(handle.fileno())

    @property
    def failed(self) -> int:
        return sum(1 for status in self.done.values() if status == STATUS_ERROR)

    @property
    def refused(self) -> int:
        return sum(1 for status in self.done.values() if status == STATUS_REFUSED)

    def close(self) -> None:
        for handle in (self._csv, self._jsonl, self._lock):
            if not handle.closed:
                handle.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
