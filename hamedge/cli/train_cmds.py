"""`hamedge train` and `hamedge evaluate`. torch is imported inside the commands only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from hamedge.cli.app import app
from hamedge.errors import DataError, HamedgeError


def _check_data(data: Path) -> None:
    if not data.is_dir():
        raise DataError(f"data folder {data} not found")
    if not (data / "Annotations" / "Tags.json").is_file():
        raise DataError(f"{data} is not in the NIH layout (no Annotations/Tags.json); "
                        f"make one with `hamedge synth` or see ARCHITECTURE.md")


def _classes(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise HamedgeError("--classes needs at least one class name")
    return names


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., "--data", help="Data set folder in the NIH layout."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, history.jsonl."),
    arch: str = typer.Option("resnet18", help="Backbone."),
    output_stride: int = typer.Option(16, help="8, 16 or 32."),
    img_size: int = typer.Option(256, help="Square input size."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names (default: the "
                                                     "data set's)."),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(2e-5, help="Adam learning rate (reference 2e-5 fine-tunes a "
                                        "pretrained backbone; from scratch ~1e-3)."),
    weight_decay: float = typer.Option(1e-4),
    lr_step: int = typer.Option(10, min=1, help="Multiply the lr by --lr-gamma every N epochs."),
    lr_gamma: float = typer.Option(0.1),
    loss_weights: Optional[str] = typer.Option(None, help="e.g. 'ano=0.01,cls=1,ex_cls=0.5,"
                                                          "bound=0.001,union=0.001'."),
    seed: int = typer.Option(0),
    workers: int = typer.Option(0, min=0, help="DataLoader worker processes."),
    val_split: str = typer.Option("val", help="Split used to pick best.safetensors."),
    limit_batches: Optional[int] = typer.Option(None, min=1, help="Batches per epoch (smoke "
                                                                  "tests / short epochs)."),
    limit_val: Optional[int] = typer.Option(None, min=1, help="Validation images per epoch."),
    description: str = typer.Option("", help="Free text stored in the model spec."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out where it "
                                                        "stopped."),
) -> None:
    """Train a HAM model (Adam, step decay, the five HAM losses); writes best.safetensors."""
    from hamedge.training.losses import LossWeights
    from hamedge.training.train import TrainConfig, train

    _check_data(data)
    config = TrainConfig(
        data=str(data), out=str(out), arch=arch, output_stride=output_stride,
        input_size=img_size, class_names=_classes(classes), description=description,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_step=lr_step,
        lr_gamma=lr_gamma, seed=seed, workers=workers, val_split=val_split,
        limit_batches=limit_batches, limit_val=limit_val, resume=resume,
        loss_weights=LossWeights.parse(loss_weights) if loss_weights else LossWeights())
    config.spec(config.class_names or ("x",))  # validate arch/stride/size before reading data
    best = train(config)
    print(f"best checkpoint: {best}")


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="hamedge checkpoint (.safetensors); "
                                                          "default: the packaged demo model."),
    data: Path = typer.Option(..., "--data", help="Data set folder in the NIH layout."),
    split: str = typer.Option("test", help="Split to evaluate (ImageSets/Main/<split>.txt)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON."),
    batch_size: int = typer.Option(16, min=1),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate the first N images only."),
    baseline: bool = typer.Option(False, "--baseline", help="Also score the centred-blob "
                                                            "localisation baseline."),
) -> None:
    """Per-class ROC AUC, anomaly AUC, T(IoU) and T(IoR) of a checkpoint on a labelled split."""
    from rich.console import Console

    from hamedge.fsutil import write_text
    from hamedge.metrics import format_table
    from hamedge.training.evaluate import evaluate_checkpoint

    _check_data(data)
    result = evaluate_checkpoint(checkpoint, data, split=split, batch_size=batch_size,
                                 limit=limit, with_baseline=baseline)
    console = Console()
    if not console.is_terminal:  # piped: do not squash the 15-column table into 80 columns
        console = Console(width=160)
    console.print(format_table(result, title=f"{Path(result['checkpoint']['path']).name} on "
                                             f"{data.name}/{split} ({result['num_images']} images)"))
    if baseline:
        blob = result["centred_blob_baseline"]["summary"]
        console.print(f"centred-blob baseline: mean T(IoU@0.3) {blob['mean_tiou@0.3']:.3f}")
    if json_out is not None:
        write_text(json_out, json.dumps(result, indent=2, sort_keys=True))
        console.print(f"metrics written to {json_out}")
