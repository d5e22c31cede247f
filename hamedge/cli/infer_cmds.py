"""`hamedge infer`: batched inference over files and folders with heatmaps, resumable.

Exit codes: 0 every input was read and run, or refused by the input gate (a row with status
"refused" and a reason); 1 some inputs failed (each is a row with status "error" and a reason);
2 a fatal or usage error (bad model, bad options, nothing to do).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from hamedge.cli.app import app
from hamedge.errors import HamedgeError
from hamedge.runtime.registry import help_text as backend_help, precision_help

DEFAULT_OUT = "hamedge-out"


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
                                        help="Decode JPEGs at reduced size (1/2, 1/4, 1/8 by DCT "
                                             "scaling, at least twice the model's input): much "
                                             "less work, slightly different pixels; not with "
                                             "--heatmaps overlay."),
    glob: Optional[str] = typer.Option(None, help="Only files whose path matches, e.g. '*.dcm'."),
    heatmaps: str = typer.Option("overlay", help="overlay | png | npy | none"),
    all_heatmaps: bool = typer.Option(False, "--all-heatmaps",
                                      help="Write every map, not only positive findings."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object per image to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Start afresh instead of resuming the results in --out."),
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
) -> None:
    """Run a model over X-ray files; write results.csv, results.jsonl and heatmaps.

    A bad file becomes a row with status 'error' and a reason; the run goes on. A file that is not a frontal chest radiograph (DICOM header: modality, SOP class, body part, view...) becomes a row with status 'refused' and the reason, unless --accept-any. Run again with the same --out to finish an interrupted run (--overwrite starts afresh).

    Exit codes: 0 all inputs ok or refused, 1 some inputs failed, 2 fatal or usage error.
    """
    from rich.console import Console

    from hamedge.api import resolve_bundle
    from hamedge.pipeline import InferOptions, model_id, run_inference
    from hamedge.pipeline.run import usable_ood
    from hamedge.runtime import open_backend

    from hamedge.gate import GateSettings

    options = InferOptions(batch=batch, workers=workers, writers=writers,
                           reduced_decode=reduced_decode, glob=glob, heatmaps=heatmaps,
                           all_heatmaps=all_heatmaps, overwrite=overwrite,
                           gate=GateSettings(accept_any, accept_secondary_capture),
                           dicom_out=dicom_out)
    options.validate()
    if out is None and not json_out:
        out = Path(DEFAULT_OUT)
    console = Console(stderr=True)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:  # before resolve_bundle, which may export the demo model first
        raise HamedgeError(f"{missing[0]}: no such file or folder")
    bundle = resolve_bundle(model)
    with open_backend(bundle, backend, precision, device, use="throughput") as runner:
        if backend == "auto" and not quiet:
            console.print(f"backend: {runner.description} ({runner.selection_reason})",
                          highlight=False, soft_wrap=True)
        ood = usable_ood(bundle, runner) if options.gate.enabled else None
        on_record = None
        if json_out:
            def on_record(record: dict) -> None:
                sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()

        show = not quiet and console.is_terminal
        if show:
            with _progress_bar(console, 0) as bar:
                task = bar.add_task("infer", total=None)

                def on_progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                summary = run_inference(paths, runner, out, options, model_id(bundle),
                                        on_progress, on_record, ood)
        else:
            summary = run_inference(paths, runner, out, options, model_id(bundle), None, on_record,
                                    ood)
    if not quiet:
        console.print(summary.line(), highlight=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)
