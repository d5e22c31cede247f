"""Pipelined folder inference: nothing lost, nothing done twice.

    reader threads (read + preprocess, a bounded window of files in flight)
        -> main thread: batches of N -> backend.run
        -> writer thread (bounded queue): predictions, boxes, durable rows in order; heatmap
           files encoded by a pool of threads (PNG encoding is most of the writing)

Threads, not processes: decoding (libpng/zlib, pydicom's numpy), Pillow's resize, OpenCV's
overlay and PNG encoding and the backends all release the GIL, and threads avoid copying every
image between processes. Reader and heatmap threads default to one per usable core: the work of
each stage comes in bursts, so each pool must be able to use every core while the others wait
(benchmarks/infer_bound.py measures the stages and the bound).
A file that cannot be read or preprocessed becomes an error row and the run goes on; a backend
or writer failure is fatal (exit 2). Exit codes: 0 every input ok, 1 some inputs failed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hamedge.errors import DataError, HamedgeError
from hamedge.gate import OFF, GateSettings
from hamedge.heatmap import HEATMAP_FORMATS, save_heatmap
from hamedge.io import SUFFIXES
from hamedge.pipeline.prediction import predictions_from_outputs
from hamedge.pipeline.store import (HEATMAP_DIR, STATUS_ERROR, STATUS_OK, STATUS_REFUSED, ResultsStore,
                                    is_results_folder, safe_record)
# the cores this process may use: also what ONNX Runtime's intra-op threads default to
from hamedge.runtime.onnxruntime import cpu_count as usable_cores

_log = logging.getLogger("hamedge.pipeline")

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_FATAL = 2
# Upper bounds keep memory bounded: at most max(2 x batch, batch + 2 x workers) images in flight.
MAX_BATCH = 1024
MAX_WORKERS = 64


@dataclass
class InferOptions:
    batch: int = 8
    workers: int | None = None  # reader threads; None: one per usable core
    writers: int | None = None  # heatmap-encoding threads; None: one per usable core
    reduced_decode: bool = False  # JPEG / JPEG 2000 at reduced size; see REDUCED_DECODE_FACTOR
    glob: str | None = None
    heatmaps: str = "overlay"  # overlay | png | npy | none
    all_heatmaps: bool = False
    overwrite: bool = False
    colormap: str = "jet"
    gate: GateSettings = field(default_factory=GateSettings)
    dicom_out: str | os.PathLike | None = None  # folder for DICOM SR + Secondary Capture results

    def validate(self) -> None:
        if not 1 <= self.batch <= MAX_BATCH:
            raise HamedgeError(f"--batch must be between 1 and {MAX_BATCH}, not {self.batch}")
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            raise HamedgeError(f"--workers must be between 1 and {MAX_WORKERS}, not {self.workers}")
        if self.writers is not None and not 1 <= self.writers <= MAX_WORKERS:
            raise HamedgeError(f"--writers must be between 1 and {MAX_WORKERS}, not {self.writers}")
        if self.heatmaps not in HEATMAP_FORMATS:
            raise HamedgeError(f"--heatmaps must be one of {', '.join(HEATMAP_FORMATS)}")
        if self.reduced_decode and self.heatmaps == "overlay":
            raise HamedgeError("--reduced-decode needs --heatmaps png, npy or none (an overlay is "
                               "drawn on the fully decoded image)")
        if self.dicom_out is not None and Path(self.dicom_out).exists() \
                and not Path(self.dicom_out).is_dir():
            raise HamedgeError(f"--dicom-out {self.dicom_out} exists and is not a folder")


# A reduced JPEG / JPEG 2000 decode keeps both sides at least this many times the model's input, so the
# (antialiased) resize to the input still averages several decoded pixels per input pixel.
REDUCED_DECODE_FACTOR = 2


@dataclass
class RunSummary:
    found: int = 0
    already_done: int = 0
    ok: int = 0
    refused: int = 0  # refused by the input gate (hamedge.gate): not errors
    failed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failed_total: int = 0  # error rows in the store, this run and earlier ones
    seconds: float = 0.0
    backend: str = ""
    out_dir: str | None = None

    @property
    def processed(self) -> int:
        return self.ok + self.refused + self.failed

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed_total else EXIT_OK

    def line(self) -> str:
        parts = [f"{self.found} input(s)"]
        if self.already_done:
            parts.append(f"{self.already_done} already done")
        parts.append(f"{self.ok} ok, {self.refused} refused, {self.failed} failed")
        skipped = sum(self.skipped.values())
        if skipped:
            what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.skipped.items() if n)
            parts.append(f"{skipped} skipped ({what})")
        text = "; ".join(parts) + f"; {self.images_per_second:.1f} images/s on {self.backend}"
        if self.out_dir:
            text += f"; results in {self.out_dir}"
        if self.failed_total:
            text += f" ({self.failed_total} error row(s), see the status and reason columns)"
        if self.refused:
            text += (f"; {self.refused} refused by the input gate (not what the model was made "
                     "for; reasons in the reason column, --accept-any runs them)")
        return text


@dataclass
class _Item:
    path: Path
    key: str
    tensor: np.ndarray | None = None
    image: np.ndarray | None = None  # kept only when an overlay needs it
    size: tuple[int, int] = (0, 0)
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # library warnings raised while reading
    refused: str | None = None  # the gate's reason
    gate: dict | None = None  # the gate's verdict and the tags it used
    header: object | None = None  # the DICOM header (no pixels), kept only for --dicom-out


def results_exclusion(inputs, out_dir) -> list[str]:
    """Folders never read as inputs: the results folder, or only its heatmaps/ when the results
    go into an input folder itself (or one above it)."""
    if out_dir is None:
        return []
    out = os.path.realpath(out_dir)
    roots = [os.path.realpath(p) for p in inputs]
    if any(root == out or root.startswith(out + os.sep) for root in roots):
        return [os.path.join(out, HEATMAP_DIR)]
    return [out]


def discover(inputs, glob: str | None = None,
             exclude: list[str] | None = None) -> tuple[list[Path], dict[str, int]]:
    """Files to run from paths given by the user (files or folders, walked recursively), in order,
    without duplicates, never from a folder in ``exclude`` nor from the results folder of an
    earlier run found below an input (its heatmaps are not X-rays). A path that does not exist is a user
    error (fatal)."""
    from hamedge.io import find_images

    files: list[Path] = []
    skipped = {"hidden": 0, "not_image": 0, "not_a_file": 0}
    excluded = [os.path.realpath(e) for e in exclude or []]
    seen = set()
    for raw in inputs:
        root = Path(raw)
        if not root.exists() and not root.is_symlink():
            raise HamedgeError(f"{root}: no such file or folder")
        if root.is_dir():
            found, skip = find_images(root, glob, exclude=excluded, prune=is_results_folder)
            for key, n in skip.items():
                skipped[key] = skipped.get(key, 0) + n
        else:  # a file named explicitly is always tried (and becomes an error row if bad)
            found = [root]
        for path in found:
            key = os.path.abspath(path)
            real = os.path.realpath(path)
            if any(real.startswith(e + os.sep) for e in excluded):
                continue
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files, skipped


def _relative_stems(files: list[Path]) -> dict[str, str]:
    """Per file key, a unique relative stem under heatmaps/ (relative to the common folder)."""
    keys = [os.path.abspath(p) for p in files]
    if not keys:
        return {}
    common = os.path.commonpath([os.path.dirname(k) for k in keys])
    rels = {k: os.path.relpath(k, common) for k in sorted(keys)}
    # strip only a suffix hamedge reads (not the tail of a DICOM UID such as 1.2.840...321)
    stems = {}
    for k, rel in rels.items():
        root, ext = os.path.splitext(rel)
        stems[k] = root if ext.lower() in SUFFIXES else rel
    # names still shared (a.png + a.bmp, a.png + a): those files keep their full relative name;
    # full names are unique, so repeating until nothing collides ends, the same way each run
    while True:
        counts = Counter(stems.values())
        clash = [k for k, stem in stems.items() if counts[stem] > 1 and stem != rels[k]]
        if not clash:
            return stems
        for k in clash:
            stems[k] = rels[k]


def model_id(bundle) -> str:
    """Identity of a bundle's model for the results manifest: its spec file and fp32 graph."""
    digest = hashlib.sha256()
    for rel in ("spec.json", "model.onnx"):
        digest.update(f"{rel}={bundle.files.get(rel, '')};".encode())
    return digest.hexdigest()


def usable_ood(bundle, backend):
    """The bundle's out-of-distribution model when it fits the graph this backend runs (its
    statistics are of raw or of refined maps), else None."""
    from hamedge.ood import load

    model = load(bundle)
    kind = "refined" if backend.heatmaps_refined else "raw"
    if model is None or model.info.get("heatmaps", "raw") != kind:
        return None
    return model


def apply_ood(gate: dict, distance: float, ood) -> str:
    """Record the out-of-distribution distance in a gate verdict; a file without tags becomes
    accepted or refused by it. Returns the refusal's reason, or ''."""
    from hamedge.gate import ACCEPTED, REFUSED, UNTAGGED

    finite = math.isfinite(distance)
    gate["ood_distance"] = round(distance, 3) if finite else None  # results.jsonl stays strict JSON
    gate["ood_threshold"] = round(ood.threshold, 3)
    if gate.get("verdict") != UNTAGGED:  # DICOM: its tags decided; the distance is information
        return ""
    if not finite or distance > ood.threshold:  # a distance that cannot be computed never passes
        gate["verdict"] = REFUSED
        gate["reason"] = (ood.reason(distance) if finite else
                          "out-of-distribution score could not be computed (non-finite features)")
        return gate["reason"]
    gate["verdict"] = ACCEPTED
    return ""


def _error_line(exc: BaseException, path: Path) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    prefix = f"{path}: "
    if text.startswith(prefix):  # hamedge.io already names the file; the row has a path column
        text = text[len(prefix):]
    if isinstance(exc, (DataError, HamedgeError)):
        return text
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return f"{type(exc).__name__}: {text}"


def run_inference(inputs, backend, out_dir: str | os.PathLike | None, options: InferOptions,
                  model_key: str = "", on_progress: Callable[[int, int], None] | None = None,
                  on_record: Callable[[dict], None] | None = None, ood=None) -> RunSummary:
    """Run every image under ``inputs`` through an open ``backend``.

    ``out_dir`` None writes no files (for --json piping). ``on_progress(done, total)`` is called
    by the writer as rows land; ``on_record(record)`` gets every row's JSON record. ``ood`` (the
    bundle's hamedge.ood.OODModel, see usable_ood) scores files without DICOM tags; unused when
    the gate is off.
    """
    from hamedge.gate import REFUSED, blank_reason, check_file
    from hamedge.io import collect_warnings, image_size, read_image_with_notes
    from hamedge.preprocess import preprocess

    options.validate()
    spec = backend.spec
    files, skipped = discover(inputs, options.glob, results_exclusion(inputs, out_dir))
    summary = RunSummary(found=len(files), skipped=skipped, backend=backend.description,
                         out_dir=str(out_dir) if out_dir is not None else None)
    if not files:
        raise HamedgeError("no images found in " + ", ".join(str(p) for p in inputs)
                           + (f" matching {options.glob!r}" if options.glob else ""))
    write_maps = options.heatmaps != "none" and out_dir is not None
    store = None
    if out_dir is not None:
        manifest = {"model_id": model_key, "classes": list(spec.class_names),
                    "precision": backend.precision,
                    "options": {"backend": backend.name, "heatmaps": options.heatmaps,
                                "all_heatmaps": options.all_heatmaps, "glob": options.glob},
                    "gate": {**options.gate.to_dict(),
                             "ood": ood.describe() if ood is not None and options.gate.enabled
                             else None}}
        store = ResultsStore(out_dir, manifest, spec.class_names, overwrite=options.overwrite)
    try:
        done = store.done if store is not None else {}
        keys = [os.path.abspath(p) for p in files]
        stems = _relative_stems(files)
        todo = [(p, k) for p, k in zip(files, keys) if k not in done]
        summary.already_done = len(files) - len(todo)
        keep_image = write_maps and options.heatmaps == "overlay"
        channels = backend.input_channels
        reduce_to = REDUCED_DECODE_FACTOR * spec.input_size if options.reduced_decode else None
        workers = options.workers or usable_cores()

        read_headers = options.gate.enabled or options.dicom_out is not None

        def load(path: Path, key: str) -> _Item:
            item = _Item(path, key)
            try:
                if read_headers:  # the gate decides before any pixel is decoded
                    with collect_warnings() as gate_notes:
                        verdict, header = check_file(path, options.gate)
                    item.notes = list(gate_notes)
                    item.gate = verdict.to_dict()
                    if verdict.refused:
                        item.refused = verdict.reason
                        return item
                    if options.dicom_out is not None:
                        item.header = header
                else:
                    item.gate = {"verdict": OFF}
                image, notes = read_image_with_notes(path, reduce_to)
                item.notes = list(dict.fromkeys(item.notes + notes))
                blank = blank_reason(image) if options.gate.enabled else ""
                if blank:
                    item.gate.update(verdict=REFUSED, reason=blank)
                    item.refused = blank
                    return item
                item.size = (int(image.shape[0]), int(image.shape[1]))
                if reduce_to:  # boxes and heatmaps are at the file's full size (DICOM: Rows x Columns)
                    item.size = image_size(path) or item.size
                item.tensor = preprocess(image, spec, channels)
                if keep_image or item.header is not None:  # overlays, DICOM Secondary Capture
                    item.image = image
            except Exception as exc:  # any failure of one file is that file's error row
                item.error = _error_line(exc, path)
            return item

        device = None
        if options.dicom_out is not None:
            from hamedge.dicom_out import Device, require_highdicom

            require_highdicom()
            device = Device(f"HAM {spec.arch}", model_key)
        writer = _Writer(store, spec, options, stems, write_maps, on_record, on_progress,
                         len(todo), summary, device, ood if options.gate.enabled else None)
        writer.start()
        start = time.perf_counter()
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="hamedge-read") as pool:
                window = max(2 * options.batch, options.batch + 2 * workers)
                pending: deque = deque()
                it = iter(todo)
                batch: list[_Item] = []
                # batches submitted to the backend and not yet handed to the writer: an
                # asynchronous backend (openvino's throughput streams) keeps all its requests busy
                # while this thread collects the next batch
                running: deque = deque()
                parallel = max(1, backend.parallel_requests)

                def collect(keep: int) -> None:
                    while len(running) > keep:
                        items, future = running.popleft()
                        writer.put(items, future.result())

                def flush() -> None:
                    if batch:
                        tensors = np.stack([b.tensor for b in batch])
                        for b in batch:
                            b.tensor = None  # free the input early
                        running.append((list(batch), backend.submit(tensors)))
                        batch.clear()
                        collect(parallel - 1)

                while True:
                    while len(pending) < window:  # bounded: at most `window` files in flight
                        nxt = next(it, None)
                        if nxt is None:
                            break
                        pending.append(pool.submit(load, *nxt))
                    if not pending:
                        break
                    item = pending.popleft().result()
                    writer.check()
                    if item.error is not None or item.refused is not None:
                        writer.put([item], None)
                        continue
                    batch.append(item)
                    if len(batch) == options.batch:
                        flush()
                flush()
                collect(0)
        finally:
            writer.finish()
        summary.seconds = time.perf_counter() - start
        if store is not None:
            summary.failed_total = store.failed
        else:
            summary.failed_total = summary.failed
        return summary
    finally:
        if store is not None:
            store.close()


def _notes_line(notes: list[str]) -> str:
    """Library warnings of an image read that still succeeded, for its row's reason."""
    if not notes:
        return ""
    more = f" (+{len(notes) - 2} more)" if len(notes) > 2 else ""
    return "read with warnings: " + "; ".join(notes[:2]) + more


class _Writer(threading.Thread):
    """Turns (items, outputs) into records, heatmap files and durable rows, off the hot path."""

    def __init__(self, store, spec, options, stems, write_maps, on_record, on_progress, total,
                 summary, device=None, ood=None) -> None:
        super().__init__(name="hamedge-writer", daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.store, self.spec, self.options, self.stems = store, spec, options, stems
        self.write_maps, self.on_record, self.on_progress = write_maps, on_record, on_progress
        self.total, self.summary, self.device, self.ood = total, summary, device, ood
        self.error: BaseException | None = None
        self.count = 0
        threads = options.writers or usable_cores()
        self.pool = (ThreadPoolExecutor(threads, thread_name_prefix="hamedge-heatmaps")
                     if write_maps and threads > 1 else None)

    def put(self, items, raw) -> None:
        while True:  # never block forever on a dead writer
            self.check()
            try:
                self.queue.put((items, raw), timeout=0.5)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        if self.is_alive():
            if self.error is None:
                self.queue.put(None)
            self.join()
        self.check()

    def run(self) -> None:
        try:
            while True:
                job = self.queue.get()
                if job is None:
                    return
                self._handle(*job)
        except BaseException as exc:  # surfaced to the main thread by check()
            self.error = exc if isinstance(exc, HamedgeError) else HamedgeError(
                f"writing results failed: {type(exc).__name__}: {exc}")
            # drain so the producer never blocks on a full queue
            while True:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)

    def _handle(self, items, raw) -> None:
        records = []
        if raw is None:
            for item in items:
                if item.refused is not None:
                    record = {"path": item.key, "status": STATUS_REFUSED, "reason": item.refused}
                else:
                    record = {"path": item.key, "status": STATUS_ERROR, "reason": item.error}
                if item.gate is not None:
                    record["gate"] = item.gate
                records.append(record)
        else:
            preds = predictions_from_outputs(raw, self.spec, [i.size for i in items],
                                             [i.key for i in items])
            distances = self.ood.distances(raw.attention_maps) if self.ood is not None else None
            refusals = [apply_ood(item.gate, float(distances[index]), self.ood)
                        if distances is not None and item.gate is not None else None
                        for index, item in enumerate(items)]
            written: list = [None] * len(items)
            if self.write_maps:  # in parallel; the rows below stay in order
                kept = [index for index, refused in enumerate(refusals) if not refused]
                run = self.pool.map if self.pool is not None else map
                for index, maps in zip(kept, run(lambda i: self._write_heatmaps(items[i], preds[i]), kept)):
                    written[index] = maps
            for index, (item, pred) in enumerate(zip(items, preds)):
                if refusals[index]:
                    records.append({"path": item.key, "status": STATUS_REFUSED,
                                    "reason": refusals[index], "gate": item.gate})
                    item.image = item.header = None
                    continue
                record = {"path": item.key, "status": STATUS_OK, "reason": _notes_line(item.notes),
                          **pred.to_dict()}
                record["path"] = item.key
                if item.gate is not None:
                    record["gate"] = item.gate
                if written[index] is not None:
                    record["heatmaps"] = written[index]
                if item.header is not None:
                    self._write_dicom(item, pred, record)
                records.append(record)
                item.image = item.header = None
        records = [safe_record(r) for r in records]
        for item in items:
            for note in item.notes:
                _log.info("%s: %s", item.key, note)
        for record in records:
            if record["status"] == STATUS_OK:
                self.summary.ok += 1
            elif record["status"] == STATUS_REFUSED:
                self.summary.refused += 1
            else:
                self.summary.failed += 1
        if self.store is not None:
            self.store.append(records)
        if self.on_record is not None:
            for record in records:
                self.on_record(record)
        self.count += len(records)
        if self.on_progress is not None:
            self.on_progress(self.count, self.total)

    def _write_dicom(self, item, pred, record) -> None:
        """SR + overlay Secondary Capture for a DICOM input. A source header highdicom cannot
        build objects from turns the row into an error (the user asked for DICOM results); a
        failing disk stops the run, as for every other file."""
        from hamedge.dicom_out import write_results

        try:
            written = write_results(self.options.dicom_out, self.stems[item.key], item.header,
                                    pred, item.image, self.device, self.options.colormap)
        except OSError:
            raise
        except Exception as exc:
            record["status"] = STATUS_ERROR
            record["reason"] = "DICOM results not written: " + _error_line(exc, item.path)
            return
        record["dicom_out"] = {kind: os.path.abspath(path) for kind, path in written.items()}

    def _write_heatmaps(self, item, pred) -> dict[str, str]:
        names = pred.map_names if self.options.all_heatmaps else pred.positive
        stem = self.stems[item.key]
        written = {}
        for name in names:
            target = self.store.heatmap_dir / stem / name
            heat = pred.heatmap(name)
            path = save_heatmap(target, heat, self.options.heatmaps, image=item.image,
                                colormap=self.options.colormap, size=pred.image_size)
            written[name] = os.path.relpath(path, self.store.dir)
        return written
