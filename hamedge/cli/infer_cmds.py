"""`hamedge infer`: batched inference over files and folders with heatmaps, resumable.

Exit codes: 0 every input was read and run, or refused by the input gate (a row with status
"refused" and a reason); 1 some inputs failed (each is a row with status "error" and a reason);
2 a fatal or usage error (bad model, bad options, nothing to do).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer

from hamedge.cli.app import app
from hamedge.errors import HamedgeError
from hamedge.runtime.registry import help_text as backend_help, precision_help

DEFAULT_OUT = "hamedge-out"
_native_log = logging.getLogger("hamedge.native")


def check_out_dir(out: Path) -> None:
    """--out must be a folder hamedge can create and write, checked before any work starts."""
    if out.exists() and not out.is_dir():
        raise HamedgeError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".hamedge-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HamedgeError(f"--out {out}: cannot create or write this folder "
                           f"({exc.strerror or type(exc).__name__})") from None


def check_choices(backend: str, precision: str, device: str | None) -> None:
    from hamedge.runtime import BACKENDS, PRECISIONS

    if backend not in BACKENDS:
        raise HamedgeError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if precision not in PRECISIONS:
        raise HamedgeError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d{1,2})?", device):
        raise HamedgeError(f"--device must be cpu, cuda or cuda:N, not {device!r}")


@contextlib.contextmanager
def native_stderr_to_log():
    """Route what C libraries print on file descriptor 2 (libpng, OpenJPEG, GDCM, OpenCV) to the
    'hamedge.native' log (shown with --verbose) instead of the terminal; Python's own stderr
    (progress, summary, errors) keeps the real terminal. A no-op when stderr is not fd 2."""
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            raise ValueError
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    old_stderr = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, encoding=old_stderr.encoding,
                      errors="backslashreplace", closefd=False)

    def pump() -> None:
        with open(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    _native_log.info("library: %s", line)

    reader = threading.Thread(target=pump, name="hamedge-stderr", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees end of file
        reader.join(timeout=5)
        sys.stderr = old_stderr
        os.close(saved)


class _TerminalHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time: the terminal, also while fd 2 is redirected
    by native_stderr_to_log (which points sys.stderr at the saved terminal)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _verbose_log(on: bool):
    logger = logging.getLogger("hamedge")
    if not on:
        return contextlib.nullcontext()
    handler = _TerminalHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    @contextlib.contextmanager
    def attached():
        logger.addHandler(handler)
        level = logger.level
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)

    return attached()


def _progress_bar(console, total: int):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- img/s" if speed is None else f"{speed:.1f} img/s", style="cyan")

    return Progress(TextColumn("infer"), BarColumn(), MofNCompleteColumn(), Speed(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)


@app.command()
def infer(
    paths: List[Path] = typer.Argument(..., help="Image files and/or folders (walked recursively)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="Bundle folder (hamedge export) or .safetensors "
                                              "checkpoint; default: the packaged demo model."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help=f"Results folder (default ./{DEFAULT_OUT}; with --json "
                                            "and no --out nothing is written)."),
    backend: str = typer.Option("auto", help=backend_help()),
    precision: str = typer.Option("fp32", help=precision_help()),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | gpu (default: the backend's choice)"),
    batch: int = typer.Option(8, "--batch", "-b", help="Images per batch (the last may be smaller)."),
    workers: Optional[int] = typer.Option(None, help="Reader threads (reading + preprocessing); "
                                                     "default: one per usable core."),
    writers: Optional[int] = typer.Option(None, help="Heatmap-writing threads; default: one per "
                                                     "usable core."),
    reduced_decode: bool = typer.Option(False, "--reduced-decode",
                                        help="Decode JPEG (1/2, 1/4, 1/8 by DCT scaling) and JPEG "
                                             "2000 files and DICOM frames (only the wavelet levels "
                                             "needed) at reduced size, at least twice the model's "
                                             "input: much less work, slightly different pixels; "
                                             "not with --heatmaps overlay."),
    glob: Optional[str] = typer.Option(None, help="Only files whose path matches, e.g. '*.dcm'."),
    heatmaps: str = typer.Option("overlay", help="overlay | png | npy | none"),
    all_heatmaps: bool = typer.Option(False, "--all-heatmaps",
                                      help="Write every map, not only positive findings."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object per image to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Start afresh instead of resuming the results in --out."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Log library warnings and messages (per file) to stderr."),
    accept_any: bool = typer.Option(False, "--accept-any",
                                    help="Turn the input gate off: run every image, also those "
                                         "that are not frontal chest radiographs (research use)."),
    accept_secondary_capture: bool = typer.Option(
        False, "--accept-secondary-capture",
        help="Let DICOM Secondary Capture objects through the gate (its other rules still apply)."),
    dicom_out: Optional[Path] = typer.Option(
        None, "--dicom-out",
        help="For DICOM inputs, also write a Structured Report (TID 1500: findings, "
             "probabilities, boxes) and a Secondary Capture of the heatmap overlay here."),
    server: Optional[str] = typer.Option(None, "--server",
                                         help="Run the model on `hamedge serve` at this URL "
                                              "(http://HOST:PORT or grpc://HOST:PORT) instead "
                                              "of here; --model/--backend/--precision are the "
                                              "server's."),
    server_timeout: float = typer.Option(60.0, help="Seconds a server request may take."),
    token_file: Optional[Path] = typer.Option(None, help="Token file for a server that needs one."),
) -> None:
    """Run a model over X-ray files; write results.csv, results.jsonl and heatmaps.

    A bad file becomes a row with status 'error' and a reason; the run goes on. A file that is not a frontal chest radiograph (DICOM header: modality, SOP class, body part, view...) becomes a row with status 'refused' and the reason, unless --accept-any. Run again with the same --out to finish an interrupted run (--overwrite starts afresh).

    Exit codes: 0 all inputs ok or refused, 1 some inputs failed, 2 fatal or usage error.
    """
    from hamedge.gate import GateSettings
    from hamedge.pipeline import InferOptions

    # every option is checked before any work (resolve_bundle may export the demo model first)
    options = InferOptions(batch=batch, workers=workers, writers=writers,
                           reduced_decode=reduced_decode, glob=glob, heatmaps=heatmaps,
                           all_heatmaps=all_heatmaps, overwrite=overwrite,
                           gate=GateSettings(accept_any, accept_secondary_capture),
                           dicom_out=dicom_out)
    options.validate()
    check_choices(backend, precision, device)
    if out is None and not json_out:
        out = Path(DEFAULT_OUT)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise HamedgeError(f"{missing[0]}: no such file or folder")
    if out is not None:
        check_out_dir(out)
    from hamedge.io import warnings_to_log

    with _verbose_log(verbose), native_stderr_to_log(), warnings_to_log():
        _infer(paths, model, out, backend, precision, device, options, json_out, quiet,
               (server, server_timeout, token_file))


def _infer(paths, model, out, backend, precision, device, options, json_out, quiet,
           remote) -> None:
    from rich.console import Console

    from hamedge.api import resolve_bundle
    from hamedge.pipeline import model_id, run_inference
    from hamedge.pipeline.run import usable_ood
    from hamedge.pipeline.store import json_line
    from hamedge.runtime import open_backend

    console = Console(stderr=True)
    server, server_timeout, token_file = remote
    if server is not None:  # the DICOM-tag gate runs here; the OOD score needs the bundle
        from hamedge.client import RemoteBackend, read_token_file

        opened = RemoteBackend(server, server_timeout, read_token_file(token_file))
        key, bundle = opened.model_id, None
    else:
        bundle = resolve_bundle(model)
        opened = open_backend(bundle, backend, precision, device, use="throughput")
        key = model_id(bundle)
    with opened as runner:
        if backend == "auto" and not quiet and bundle is not None:
            console.print(f"backend: {runner.description} ({runner.selection_reason})",
                          highlight=False, soft_wrap=True)
        if runner.int8_choice is not None and not quiet:
            console.print(runner.int8_choice.reason(f"int8 graph {runner.int8_choice.chosen}"),
                          highlight=False, soft_wrap=True)
        ood = usable_ood(bundle, runner) if options.gate.enabled and bundle is not None else None
        on_record = None
        if json_out:
            def on_record(record: dict) -> None:
                sys.stdout.write(json_line(record))
                sys.stdout.flush()

        show = not quiet and console.is_terminal
        if show:
            with _progress_bar(console, 0) as bar:
                task = bar.add_task("infer", total=None)

                def on_progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                summary = run_inference(paths, runner, out, options, key, on_progress,
                                        on_record, ood)
        else:
            summary = run_inference(paths, runner, out, options, key, None, on_record, ood)
    if not quiet:
        console.print(summary.line(), highlight=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)
