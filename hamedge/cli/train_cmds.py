"""`hamedge train` and `hamedge evaluate`. torch is imported inside the commands only.

Both read --data through hamedge.datasets.load_dataset (every layout it knows, the same errors).
`hamedge train --config REF.yaml` takes the HAM reference repository's YAML; a flag given on the
command line overrides it, and config.json records the YAML, the flags and the result.
`hamedge train --nproc N` starts torchrun with N processes of `python -m hamedge.train`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from hamedge.cli.app import app
from hamedge.errors import HamedgeError


def _classes(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise HamedgeError("--classes needs at least one class name")
    return names


def _given(ctx: typer.Context) -> dict[str, object]:
    """The options typed on the command line (not defaults)."""
    return {name: value for name, value in ctx.params.items()
            if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def _argv(ctx: typer.Context, drop: tuple[str, ...]) -> list[str]:
    """The command line's own options again (for the processes torchrun starts)."""
    argv: list[str] = []
    for param in ctx.command.params:
        source = getattr(ctx.get_parameter_source(param.name), "name", "")
        if param.name in drop or source != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            names = param.opts if value else (param.secondary_opts or param.opts)
            argv.append(names[0])
        else:
            argv += [param.opts[0], str(value)]
    return argv


# Command-line option -> TrainConfig field where the names differ.
_FIELD = {"img_size": "input_size", "classes": "class_names", "loss_weights": "loss_weights"}


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="Data set: NIH's release folder, "
                                        "CheXpert, the reference layout or a synthetic set."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, history.jsonl."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A HAM reference YAML "
                                               "config; flags override it."),
    arch: Optional[str] = typer.Option(None, help="Backbone [resnet18]."),
    output_stride: Optional[int] = typer.Option(None, help="8, 16 or 32 [16]."),
    dilation: Optional[bool] = typer.Option(None, "--dilation/--no-dilation",
                                            help="Dilated last stages [off]."),
    img_size: Optional[int] = typer.Option(None, help="Square input size [256]."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names (default: the "
                                                     "data set's)."),
    epochs: Optional[int] = typer.Option(None, help="[10]"),
    batch_size: Optional[int] = typer.Option(None, help="GLOBAL batch per optimiser step, over "
                                             "all processes and accumulation steps [16]."),
    accum_steps: Optional[int] = typer.Option(None, help="Gradient accumulation steps [1]."),
    optimizer: Optional[str] = typer.Option(None, help="adam, sgd or rmsprop [adam]."),
    lr: Optional[float] = typer.Option(None, help="Learning rate [2e-5: the reference's, for a "
                                       "pretrained backbone; from scratch ~1e-3]."),
    momentum: Optional[float] = typer.Option(None, help="SGD/RMSprop momentum [0.9]."),
    weight_decay: Optional[float] = typer.Option(None, help="[1e-4]"),
    lr_step: Optional[int] = typer.Option(None, help="Multiply the lr by --lr-gamma every N "
                                          "epochs [10]."),
    lr_gamma: Optional[float] = typer.Option(None, help="[0.1]"),
    loss_weights: Optional[str] = typer.Option(None, help="e.g. 'ano=0.01,cls=1,ex_cls=0.5,"
                                                          "bound=0.001,union=0.001'."),
    seed: Optional[int] = typer.Option(None, help="Weights, shuffling, augmentation [0]."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes per "
                                          "process [GPU: min(8, cores per process); CPU: 0]."),
    pin_memory: Optional[bool] = typer.Option(None, "--pin-memory/--no-pin-memory",
                                              help="[on with GPUs]"),
    train_split: Optional[str] = typer.Option(None, help="Split or image list to train on "
                                              "[train]."),
    val_split: Optional[str] = typer.Option(None, help="Split that picks best.safetensors "
                                            "[val]; 'none' for no validation."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of the official training "
                                                 "list held out BY PATIENT as val [0.1]."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the patient split [0]."),
    uncertain: Optional[str] = typer.Option(None, help="CheXpert uncertain labels: zeros, ones "
                                            "or ignore [zeros]."),
    require_all: Optional[bool] = typer.Option(None, "--require-all", help="Refuse a partial "
                                               "download instead of using the images present."),
    allow_patient_overlap: Optional[bool] = typer.Option(
        None, "--allow-patient-overlap", help="Accept hand-given lists that share patients "
        "(the reference's 5-fold lists split by image)."),
    limit_batches: Optional[int] = typer.Option(None, help="Steps per epoch (smoke tests)."),
    limit_val: Optional[int] = typer.Option(None, help="Validation images per epoch."),
    val_every: Optional[int] = typer.Option(None, help="Validate every N epochs [1]."),
    save_every: Optional[int] = typer.Option(None, help="Also save a resumable state every N "
                                             "steps [0: epoch ends only]."),
    description: Optional[str] = typer.Option(None, help="Free text stored in the model spec."),
    resume: Optional[bool] = typer.Option(None, "--resume", help="Continue the run in --out "
                                          "where it stopped (any number of processes)."),
    init: Optional[Path] = typer.Option(None, help="Starting weights: a hamedge checkpoint or a "
                                        "torchvision ResNet .pth (ImageNet)."),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help="BatchNorm "
                                           "statistics over all processes [off; on with "
                                           "--config]."),
    amp: Optional[str] = typer.Option(None, help="Mixed precision: off, bf16 or fp16 (GPU) "
                                      "[off]."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda [auto]."),
    nproc: Optional[int] = typer.Option(None, help="Processes to start with torchrun (one per "
                                        "GPU) [1; the config's GPUs where visible]."),
    dist_timeout: Optional[float] = typer.Option(None, help="Seconds a process waits for a "
                                                 "peer before the run fails [600]."),
    threads: Optional[int] = typer.Option(None, help="torch threads per process."),
) -> None:
    """Train a HAM model (the five HAM losses, one process or many); writes best.safetensors."""
    from hamedge.training import distributed
    from hamedge.training.train import TrainConfig, check_config, train

    given = _given(ctx)
    given.pop("out")
    values: dict[str, object] = {}
    reference_raw = None
    if config_file is not None:
        from hamedge.training.reference_config import read_reference_config, reference_gpus

        values, reference_raw = read_reference_config(config_file)
        given.pop("config_file")
    flags = {k: v for k, v in given.items() if k != "nproc"}
    for name, value in flags.items():
        field = _FIELD.get(name, name)
        if name == "classes":
            value = _classes(value)
        elif name == "loss_weights":
            from hamedge.training.losses import LossWeights

            value = LossWeights.parse(value)
        elif name in ("data", "init"):
            value = str(value)
        elif name == "val_split" and str(value).lower() == "none":
            value = None
        values[field] = value
    if "data" not in values:
        raise HamedgeError("--data is needed (the config's DataRoot is a placeholder or absent)"
                           if config_file else "--data is needed")
    if reference_raw is not None:
        values["reference_config"] = {"path": str(config_file), "settings": reference_raw,
                                      "flags": {k: str(v) for k, v in flags.items()}}
    config = TrainConfig(out=str(out), **values)

    world = distributed.env_world()
    processes = nproc
    if processes is None and reference_raw is not None and not world.distributed:
        wanted = reference_gpus(reference_raw)
        visible = _cuda_devices()
        processes = wanted if visible >= wanted else 1
        if wanted > 1 and processes == 1:
            print(f"note: the reference config ran on {wanted} GPUs; {visible} visible here, so "
                  f"1 process trains with the same global batch {config.batch_size}")
    if processes is not None and processes < 1:
        raise HamedgeError(f"--nproc must be at least 1, not {processes}")
    if processes and processes > 1 and not world.distributed:
        check_config(config, processes)
        if not Path(config.data).exists():
            raise HamedgeError(f"{config.data}: no such data set")
        argv = _argv(ctx, ("nproc",))
        code = distributed.launch(argv, processes)
        raise typer.Exit(code)
    best = train(config)
    if world.is_main:
        print(f"best checkpoint: {best}")


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable torch CUDA: no GPUs
        return 0


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="hamedge checkpoint (.safetensors); "
                                                          "default: the packaged demo model."),
    data: Path = typer.Option(..., "--data", help="Data set: NIH's release folder, CheXpert, "
                                                  "the reference layout or a synthetic set."),
    split: str = typer.Option("test", help="Split (train, val, test, trainval, all) or an "
                                           "image list."),
    uncertain: str = typer.Option("zeros", help="CheXpert uncertain labels: zeros, ones, "
                                                "ignore."),
    require_all: bool = typer.Option(False, "--require-all", help="Refuse a partial download."),
    val_fraction: float = typer.Option(0.1, help="For split 'val'/'train': the patient share "
                                                 "held out (as in training)."),
    split_seed: int = typer.Option(0, help="For split 'val'/'train': the patient split's seed."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON."),
    batch_size: int = typer.Option(16, min=1),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate the first N images only."),
    baseline: bool = typer.Option(False, "--baseline", help="Also score the centred-blob "
                                                            "localisation baseline."),
) -> None:
    """Per-class ROC AUC, anomaly AUC, T(IoU) and T(IoR) of a checkpoint on a labelled split."""
    from rich.console import Console

    from hamedge.datasets import check_data_options
    from hamedge.fsutil import write_text
    from hamedge.metrics import format_table
    from hamedge.training.evaluate import evaluate_checkpoint

    check_data_options(split, uncertain, val_fraction)
    result = evaluate_checkpoint(checkpoint, data, split=split, batch_size=batch_size,
                                 limit=limit, with_baseline=baseline, uncertain=uncertain,
                                 require_all=require_all, val_fraction=val_fraction,
                                 split_seed=split_seed)
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

