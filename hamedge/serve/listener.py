"""``hamedge listen``: a DICOM C-STORE receiver (pynetdicom) in front of the infer pipeline. No torch.

A modality or PACS pushes instances; only the configured calling AE titles may associate. Each
received instance is written (owner-only) to ``<out>/received/`` and goes through
``hamedge.pipeline.run_inference``, the path of ``hamedge infer``, into the same results store
(results.csv/jsonl, heatmaps); on start, instances received earlier and not yet in the store
are run, so nothing is lost or run twice. Instances are run in
small batches by one worker thread; the C-STORE answer does not wait for inference.
Logs name AE titles, peers and counts, never patient names, IDs or UIDs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from pathlib import Path

from hamedge.errors import HamedgeError

log = logging.getLogger("hamedge.listen")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # C-STORE "Refused: Out of resources" (PS3.4 Annex B)
STATUS_CANNOT_UNDERSTAND = 0xC000  # C-STORE "Error: Cannot understand"


def _safe_name(uid: str) -> str:
    """File name of a received instance: its SOP Instance UID when it is a plain UID, else a
    digest (a UID is digits and dots; anything else must not reach the file system)."""
    if uid and len(uid) <= 64 and all(c.isdigit() or c == "." for c in uid) and not uid.startswith("."):
        return uid + ".dcm"
    return hashlib.sha256(uid.encode(errors="replace")).hexdigest()[:32] + ".dcm"


class Listener:
    """C-STORE SCP feeding a backend. ``start()``, then ``stop()`` (drains the queue)."""

    def __init__(self, backend, out_dir: str | os.PathLike, ae_title: str = "HAMEDGE",
                 address: str = "127.0.0.1", port: int = 11112,
                 calling_ae_titles: tuple[str, ...] = (), options=None, model_key: str = "",
                 batch_wait: float = 0.2) -> None:
        from hamedge.pipeline import InferOptions

        if not calling_ae_titles:
            raise HamedgeError("give the calling AE titles allowed to send (--allow-ae SCANNER,...)")
        for title in (ae_title, *calling_ae_titles):
            if not title or len(title) > 16 or not title.isascii() or "\\" in title:
                raise HamedgeError(f"AE title {title!r}: 1 to 16 ASCII characters, no backslash")
        self.backend, self.out_dir = backend, Path(out_dir)
        self.ae_title, self.address, self.port = ae_title, address, int(port)
        self.calling = tuple(calling_ae_titles)
        self.options = options or InferOptions()
        self.model_key = model_key
        self.batch_wait = batch_wait
        self.received_dir = self.out_dir / "received"
        self.queue: queue.Queue = queue.Queue()
        self.counts = {"received": 0, "stored_failed": 0, "rejected": 0, "ok": 0, "failed": 0,
                       "refused": 0}
        self._server = None
        self._worker: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- DICOM side -------------------------------------------------------------------------
    def start(self) -> "Listener":
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt

        self.received_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.out_dir, 0o700)  # results and received files: reachable by this user only
        os.chmod(self.received_dir, 0o700)
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:  # compressed syntaxes too (RLE, JPEG...)
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = list(self.calling)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_ABORTED, self._on_aborted)]
        try:
            self._server = ae.start_server((self.address, self.port), block=False,
                                           evt_handlers=handlers)
        except OSError as exc:
            raise HamedgeError(f"cannot listen on {self.address}:{self.port}: {exc.strerror}") \
                from None
        self._worker = threading.Thread(target=self._work, name="hamedge-listen", daemon=True)
        self._worker.start()
        for left in sorted(self.received_dir.glob("*.dcm")):  # received before a stop or a
            self.queue.put(left)  # failure; the results store skips those already done
        log.info("listening as %s on %s:%d for %s", self.ae_title, self.address, self.port,
                 ", ".join(self.calling))
        return self

    @staticmethod
    def _peer(event) -> str:
        info = event.assoc.requestor
        return f"{info.ae_title} at {info.address}"

    def _on_accepted(self, event) -> None:
        log.info("association from %s accepted", self._peer(event))

    def _on_rejected(self, event) -> None:
        self.counts["rejected"] += 1
        log.warning("association from %s rejected (calling AE title not allowed)",
                    self._peer(event))

    def _on_aborted(self, event) -> None:
        log.warning("association from %s aborted", self._peer(event))

    def _on_store(self, event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot decode
            self.counts["stored_failed"] += 1
            log.error("C-STORE from %s: cannot decode the dataset (%s)", self._peer(event),
                      type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        target = self.received_dir / _safe_name(str(getattr(event.request,
                                                            "AffectedSOPInstanceUID", "")))
        try:
            from hamedge.fsutil import atomic_write

            with atomic_write(target) as handle:
                dataset.save_as(handle, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001 - disk full, permissions, unwritable dataset
            self.counts["stored_failed"] += 1
            log.error("C-STORE from %s: storing failed (%s)", self._peer(event),
                      type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        self.counts["received"] += 1
        self.queue.put(target)
        return STATUS_SUCCESS

    # -- inference side ---------------------------------------------------------------------
    def _work(self) -> None:
        from hamedge.pipeline import run_inference

        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self.options.batch * 4:
                try:
                    item = self.queue.get(timeout=self.batch_wait)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                summary = run_inference(batch, self.backend, self.out_dir, self.options,
                                        self.model_key)
                self.counts["ok"] += summary.ok
                self.counts["failed"] += summary.failed
                self.counts["refused"] += summary.refused
                log.info("ran %d instance(s): %d ok, %d failed, %d refused by the input gate",
                         len(batch), summary.ok, summary.failed, summary.refused)
            except Exception as exc:  # noqa: BLE001 - the files stay in received/ for a rerun
                self.error = exc
                log.error("inference failed for %d instance(s): %s (they stay in %s)",
                          len(batch), " ".join(str(exc).split()), self.received_dir)
            if stop:
                return

    def stop(self, timeout: float = 60.0) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self.queue.put(None)
            self._worker.join(timeout)
            self._worker = None

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
