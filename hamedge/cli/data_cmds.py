"""Data commands: `hamedge synth` (a synthetic chest X-ray set in the NIH layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hamedge.cli.app import app


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the data set into (NIH layout)."),
    count: int = typer.Option(1000, "--count", "-n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives byte-identical files."),
    size: int = typer.Option(512, "--size", help="Image side in pixels (square)."),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="Share of images in the val split."),
    test_fraction: float = typer.Option(0.15, "--test-fraction", help="Share of images in the test split."),
    box_fraction: float = typer.Option(0.25, "--box-fraction",
                                       help="Share of abnormal train images whose boxes may supervise."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default: all cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
) -> None:
    """Generate synthetic frontal chest radiographs with labels and boxes (demo model data)."""
    from hamedge.synth import generate

    info = generate(out, count, seed, size=size, val_fraction=val_fraction, test_fraction=test_fraction,
                    box_fraction=box_fraction, workers=workers, overwrite=overwrite)
    splits = info["splits"]
    seconds = info["seconds"]
    print(f"wrote {info['count']} images ({info['normal']} normal) of {size}px to {out}: "
          f"classes {', '.join(info['classes'])}; train/val/test {splits['train']}/{splits['val']}/"
          f"{splits['test']} (box-supervised train {info['bbox_splits']['train']}); "
          f"{seconds:.1f} s, {info['count'] / max(seconds, 1e-9):.0f} images/s")
