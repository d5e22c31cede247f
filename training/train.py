"""The HAM training loop: one process or many (torchrun + DistributedDataParallel), the five
losses, validation, resumable checkpoints.

Run folder (written by rank 0 only):
  last.safetensors   weights after the latest finished step that was saved
  last.train.pt      optimiser, scheduler, grad scaler, epoch/step position, best score, the run's
                     batch layout; read back with torch.load(weights_only=True) on --resume
  best.safetensors   the epoch with the highest validation score (selection rule below)
  history.jsonl      one JSON line per epoch: losses, lr, images/s, data-loading time, validation
  config.json        the configuration of the run (and the reference config it came from)
  splits.json        how each split was made (rule, seed, image and patient counts) and the
                     sha256 of its image list; splits/<split>.txt the image names

Selection rule for best.safetensors: mean AUC + mean T(IoU@0.3) on the validation split
(hamedge.evaluation.selection_score), computed over all ranks' shares of the validation images.

Batches: ``batch_size`` is the GLOBAL batch of one optimiser step, split into ``accum_steps``
micro-batches and each over the processes (training.distributed). Shuffling is seeded by
(seed, epoch), augmentation by (seed, epoch, image) and dropout by (seed, epoch, image), so the
images and random draws of every step do not depend on the number of processes or workers. A run
resumed with --resume continues at the step where it stopped, with any number of processes, as
long as the global batch is the same; with synchronised BatchNorm (``sync_bn``) the weights are
then those of an uninterrupted run up to float summation order. Without it, BatchNorm statistics
are per process, as in any DDP run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hamedge.errors import DataError, HamedgeError
from hamedge.fsutil import write_bytes, write_text
from hamedge.spec import ModelSpec
from hamedge.training import distributed
from hamedge.training.losses import LossWeights, batch_losses

LOSS_KEYS = ("ano", "cls", "ex_cls", "bound", "union", "total")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
AMP_MODES = ("off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
STATE_FORMAT = 2


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "resnet18"
    output_stride: int = 16
    keep_maxpool: bool = True
    dilation: bool = False
    input_size: int = 256
    in_channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    class_names: tuple[str, ...] | None = None  # None: the data set's classes
    description: str = ""
    epochs: int = 10
    batch_size: int = 16  # global: images per optimiser step over all processes
    accum_steps: int = 1
    optimizer: str = "adam"
    lr: float = 2e-5  # the reference's (fine-tuning a pretrained backbone); ~1e-3 from scratch
    momentum: float = 0.9  # SGD / RMSprop only
    weight_decay: float = 1e-4
    lr_step: int = 10  # multiply the lr by lr_gamma every lr_step epochs
    lr_gamma: float = 0.1
    loss_weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    workers: int | None = None  # None: on GPUs min(8, cores per process), on CPUs 0 (the
    # model's threads already use every core there)
    pin_memory: bool | None = None  # None: on when training on a GPU
    persistent_workers: bool = True  # with workers > 0
    prefetch_factor: int = 2
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation (best.safetensors = last epoch)
    test_split: str | None = "test"  # only checked for overlap with train/val, never read in training
    train_box_list: str | None = None  # reference helperSet: train images whose boxes supervise
    val_box_list: str | None = None  # reference valIoUSet
    val_fraction: float = 0.1  # of the official training list, by patient, where no val list exists
    split_seed: int = 0
    uncertain: str = "zeros"  # CheXpert uncertain labels: zeros, ones, ignore
    require_all: bool = False  # refuse a partial download instead of using the images present
    allow_patient_overlap: bool = False
    augment: bool = True
    resize_factor: float | str = "dynamic"
    limit_batches: int | None = None  # optimiser steps per epoch, for smoke tests
    limit_val: int | None = None  # validation images, for smoke tests
    val_batch_size: int = 32
    val_every: int = 1
    save_every: int = 0  # also save a resumable state every N steps (0: at epoch ends only)
    resume: bool = False
    init: str | None = None  # starting weights: a hamedge checkpoint or a torchvision ResNet .pth
    sync_bn: bool = False
    amp: str = "off"
    device: str = "auto"
    dist_timeout: float = 600.0  # seconds a collective may wait for a peer before failing
    threads: int | None = None  # torch threads per process; None: cores / local processes
    reference_config: dict[str, Any] | None = None  # the reference YAML this run came from

    def spec(self, class_names: tuple[str, ...]) -> ModelSpec:
        return ModelSpec(arch=self.arch, output_stride=self.output_stride,
                         keep_maxpool=self.keep_maxpool, dilation=self.dilation,
                         input_size=self.input_size, in_channels=self.in_channels,
                         mean=tuple(self.mean), std=tuple(self.std),
                         class_names=tuple(class_names), description=self.description)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["loss_weights"] = self.loss_weights.to_dict()
        return data


def check_config(config: TrainConfig, world_size: int = 1) -> None:
    """Every option checked before any work starts; each problem is one HamedgeError line."""
    def finite(name: str, value, low=None, high=None, low_open=False) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise HamedgeError(f"{name} must be a finite number, not {value!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise HamedgeError(f"{name} must be {'>' if low_open else '>='} {low:g}, not {value!r}")
        if high is not None and value > high:
            raise HamedgeError(f"{name} must be <= {high:g}, not {value!r}")

    def whole(name: str, value, low: int = 1) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise HamedgeError(f"{name} must be an integer >= {low}, not {value!r}")

    finite("--lr", config.lr, 0.0, low_open=True)
    finite("--weight-decay", config.weight_decay, 0.0)
    finite("--momentum", config.momentum, 0.0, 1.0)
    finite("--lr-gamma", config.lr_gamma, 0.0, 1.0, low_open=True)
    finite("--val-fraction", config.val_fraction, 0.0, 1.0, low_open=True)
    if config.val_fraction >= 1.0:
        raise HamedgeError(f"--val-fraction must be below 1, not {config.val_fraction!r}")
    finite("--dist-timeout", config.dist_timeout, 0.0, low_open=True)
    for name, value in config.loss_weights.to_dict().items():
        finite(f"loss weight {name}", value, 0.0)
    for name in ("epochs", "batch_size", "accum_steps", "lr_step", "val_batch_size", "val_every",
                 "prefetch_factor", "input_size"):
        whole("--" + name.replace("_", "-"), getattr(config, name))
    for name in ("save_every", "seed", "split_seed"):
        whole("--" + name.replace("_", "-"), getattr(config, name), 0)
    if config.workers is not None:
        whole("--workers", config.workers, 0)
    for name in ("limit_batches", "limit_val", "threads"):
        if getattr(config, name) is not None:
            whole("--" + name.replace("_", "-"), getattr(config, name))
    if config.optimizer not in OPTIMIZERS:
        raise HamedgeError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {config.optimizer!r}")
    if config.amp not in AMP_MODES:
        raise HamedgeError(f"--amp must be one of {', '.join(AMP_MODES)}, not {config.amp!r}")
    if config.device not in DEVICES:
        raise HamedgeError(f"--device must be one of {', '.join(DEVICES)}, not {config.device!r}")
    if config.resize_factor != "dynamic":
        try:
            factor = float(config.resize_factor)
        except (TypeError, ValueError):
            raise HamedgeError(f"resize factor must be 'dynamic' or a number >= 1, not "
                               f"{config.resize_factor!r}") from None
        finite("resize factor", factor, 1.0)
    per_step = config.accum_steps * world_size
    if config.batch_size % per_step:
        raise HamedgeError(f"the global batch {config.batch_size} does not split into "
                           f"{config.accum_steps} accumulation step(s) x {world_size} process(es)")
    if config.uncertain not in ("zeros", "ones", "ignore"):
        raise HamedgeError(f"--uncertain must be zeros, ones or ignore, not {config.uncertain!r}")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise HamedgeError(f"--out {out} is a file, not a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK) or str(parent).startswith(("/proc", "/sys")):
        raise HamedgeError(f"--out {out}: cannot create or write there")
    config.spec(config.class_names or ("x",))  # arch, stride, size, channels, mean/std


# ---------------------------------------------------------------------------------------------
# Small pieces


def _torch_save_atomic(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def _append_history(path: Path, entry: dict[str, Any]) -> None:
    text = path.read_text() if path.exists() else ""
    write_text(path, text + json.dumps(entry, sort_keys=True) + "\n")


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items])
            for key in items[0]}


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def torch_predict_fn(model: torch.nn.Module, device: torch.device | None = None, amp: str = "off"):
    """predict_fn for hamedge.evaluation.run_evaluation from a torch HAM: sigmoid probabilities
    and raw CAMs (anomaly first), the exported graphs' outputs."""
    device = device or torch.device("cpu")

    def predict(batch: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        with torch.no_grad(), _autocast(device, amp):
            out = model(x, refine=False)
        return tuple(t.float().cpu().numpy() for t in out.graph_outputs())
    return predict


def load_split(root: str | os.PathLike, split: str, class_names=None, **options):
    """A labelled split of any layout hamedge.datasets.load_dataset reads, never empty."""
    from hamedge.datasets import load_dataset

    labelled = load_dataset(root, split, class_names, **options)
    if not labelled.records:
        raise DataError(f"split {split!r} of {root} has no images")
    return labelled


class SeededDropout2d(nn.Module):
    """Dropout2d whose mask for each image is drawn from that image's own seed (``seeds`` set
    before the forward), so a batch's masks do not depend on how it is split over processes
    or on the global RNG. Replaces the head's Dropout2d during training only (no state)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.seeds: list[int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.seeds is None or len(self.seeds) != x.shape[0]:
            raise RuntimeError("SeededDropout2d needs one seed per image")
        keep = 1.0 - self.p
        masks = []
        for seed in self.seeds:
            g = torch.Generator().manual_seed(seed)
            masks.append((torch.rand(x.shape[1], generator=g) < keep).to(x.dtype) / keep)
        return x * torch.stack(masks).to(x.device)[:, :, None, None]


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index, 0xD20]).generate_state(1, np.uint64)[0]
               & 0x7FFF_FFFF_FFFF_FFFF)


def _init_weights(model: nn.Module, path: str, console) -> None:
    """Starting weights: a hamedge checkpoint (every tensor that fits), or a torchvision ResNet
    state dict (.pth, ImageNet weights as the reference starts from) for the backbone."""
    from hamedge.model.checkpoint import load_checkpoint

    p = Path(path)
    if not p.is_file():
        raise HamedgeError(f"--init {p}: no such file")
    if p.suffix == ".safetensors":
        state = load_checkpoint(p)[1]
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
            raise HamedgeError(f"--init {p}: not a readable state dict ({type(exc).__name__})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise HamedgeError(f"--init {p}: not a state dict")
        state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fits:
        raise HamedgeError(f"--init {p}: none of its tensors fits this {type(model).__name__}")
    model.load_state_dict(fits, strict=False)
    console.print(f"initial weights: {len(fits)} of {len(own)} tensors from {p}", highlight=False)


def _progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"), console=console, transient=False)


class _Signals:
    """SIGTERM (what torchrun sends the other ranks when one fails, and `kill`) raises
    KeyboardInterrupt like Ctrl-C, except inside an optimiser step, which is finished first."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False

    def handler(self, signum, frame):
        if self.critical:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def protect(self):
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# Data and splits


def _list_sha256(labelled) -> str:
    return hashlib.sha256("\n".join(r.name for r in labelled.records).encode()).hexdigest()


def load_splits(config: TrainConfig, class_names=None) -> dict[str, Any]:
    """train, val (or None) and test (or None) sets of the run, checked for shared patients."""
    from hamedge.datasets import check_disjoint, find_list, load_dataset, read_list

    options = dict(uncertain=config.uncertain, require_all=config.require_all,
                   val_fraction=config.val_fraction, split_seed=config.split_seed)
    train_set = load_split(config.data, config.train_split, class_names or config.class_names,
                           box_list=config.train_box_list, **options)
    classes = tuple(train_set.class_names)
    sets: dict[str, Any] = {"train": train_set, "val": None, "test": None}
    if config.val_split:
        sets["val"] = load_split(config.data, config.val_split, classes,
                                 box_list=config.val_box_list, **options)
        if config.val_box_list and config.val_split.endswith(".txt"):
            # As the reference: the box images are scored for IoU within the validation list.
            root = Path(config.data)
            boxes = set(read_list(find_list(root, config.val_box_list, ("bbox", "Main"))))
            outside = boxes - set(read_list(find_list(root, config.val_split, ("Main",))))
            if outside:
                raise DataError(f"{len(outside)} image(s) of the box validation list "
                                f"{config.val_box_list} are not in the validation list "
                                f"{config.val_split}, e.g. {sorted(outside)[0]}")
    if config.test_split:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sets["test"] = load_dataset(config.data, config.test_split, classes, **options)
        except DataError:
            sets["test"] = None  # no test list: nothing to check against
    present = {k: v.records for k, v in sets.items() if v is not None}
    if not config.allow_patient_overlap:
        check_disjoint(present)
    return sets


def _split_record(sets: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, labelled in sets.items():
        if labelled is None:
            continue
        info = {k: v for k, v in labelled.info.items() if isinstance(v, (str, int, float, list))}
        info.update(images=len(labelled), sha256=_list_sha256(labelled))
        out[name] = info
    return out


# ---------------------------------------------------------------------------------------------
# The loop


def pick_device(config: TrainConfig, world: distributed.World) -> torch.device:
    want = config.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise HamedgeError("--device cuda: no CUDA GPU is visible to torch")
        if world.local_rank >= torch.cuda.device_count():
            raise HamedgeError(f"local rank {world.local_rank} has no GPU "
                               f"({torch.cuda.device_count()} visible)")
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def train(config: TrainConfig, console=None) -> Path:
    """Train per ``config`` in this process, as one rank of a torchrun job when its environment
    says so; returns the path of best.safetensors (last.safetensors without validation).
    Ctrl-C / SIGTERM saves a resumable state (rank 0) and re-raises."""
    world = distributed.env_world()
    check_config(config, world.size)
    if config.amp == "fp16" and not (config.device != "cpu" and torch.cuda.is_available()):
        raise HamedgeError("--amp fp16 needs a CUDA GPU (bf16 also runs on CPUs)")
    device = pick_device(config, world)
    world = distributed.init(device, config.dist_timeout)
    try:
        return _train(config, world, device, console)
    except BaseException as exc:
        if world.distributed and not isinstance(exc, SystemExit):
            if distributed.report_rank_error(world, exc):
                raise SystemExit(1) from None
            if not isinstance(exc, HamedgeError):
                raise HamedgeError(f"rank {world.rank}: {type(exc).__name__}: "
                                   f"{(str(exc).strip().splitlines() or [''])[0]}") from None
            raise HamedgeError(f"rank {world.rank}: {exc}") from None
        raise
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, world: distributed.World, device: torch.device, console) -> Path:
    from rich.console import Console

    from hamedge.datasets import DataWarning
    from hamedge.model.checkpoint import load_checkpoint, save_checkpoint
    from hamedge.model.network import HAM
    from hamedge.training.data import HAMDataset

    console = console or Console(stderr=True, soft_wrap=True)
    if not world.is_main:
        console = Console(stderr=True, quiet=True)
        warnings.simplefilter("ignore", DataWarning)
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // world.local_size))
    out = Path(config.out)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    last_w, last_t, best_w = out / "last.safetensors", out / "last.train.pt", out / "best.safetensors"
    history = out / "history.jsonl"

    sets = load_splits(config)
    train_set, val_set = sets["train"], sets["val"]
    class_names = tuple(train_set.class_names)
    spec = config.spec(class_names)
    splits_record = _split_record(sets)
    if config.resume and (out / "splits.json").is_file():
        before = json.loads((out / "splits.json").read_text())
        if before.get("train", {}).get("sha256") != splits_record["train"]["sha256"]:
            raise HamedgeError(f"the training split differs from the one {out} was trained on "
                               "(other data, split seed or validation fraction)")

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = HAM(spec)
    if config.init and not config.resume:
        _init_weights(model, config.init, console)
    dropout = SeededDropout2d(model.cls_head[3].p)
    model.cls_head[3] = dropout
    if config.sync_bn:
        model = distributed.sync_batchnorm(model, world, device)
    model.to(device)
    params = model.parameters()
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
    # The reference's schedule: lr * gamma ** ((epoch - 1) // step), stepped once per epoch.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step,
                                                gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    start_epoch, start_step, best_score = 1, 0, -float("inf")
    layout = {"global_batch": config.batch_size, "accum_steps": config.accum_steps,
              "world_size": world.size, "sync_bn": config.sync_bn}
    if config.resume:
        if not (last_w.is_file() and last_t.is_file()):
            raise HamedgeError(f"nothing to resume in {out} (no last.safetensors/last.train.pt)")
        saved_spec, state, _ = load_checkpoint(last_w)
        if not saved_spec.same_architecture(spec):
            raise HamedgeError(f"{last_w} is a {saved_spec.arch} with {saved_spec.num_classes} "
                               f"classes, not this run's {spec.arch} with {spec.num_classes}")
        model.load_state_dict(state)
        tstate = torch.load(last_t, map_location="cpu", weights_only=True)
        before = tstate.get("layout", {})
        if before.get("global_batch", config.batch_size) != config.batch_size:
            raise HamedgeError(f"{out} was trained with a global batch of "
                               f"{before['global_batch']}; resume with --batch-size "
                               f"{before['global_batch']} (the processes may change)")
        optimizer.load_state_dict(tstate["optimizer"])
        scheduler.load_state_dict(tstate["scheduler"])
        if "scaler" in tstate and tstate["scaler"]:
            scaler.load_state_dict(tstate["scaler"])
        # The schedule of this invocation wins (a run may be resumed with a shorter plan).
        scheduler.step_size, scheduler.gamma = config.lr_step, config.lr_gamma
        start_epoch, start_step = int(tstate["epoch"]), int(tstate["batch"])
        best_score = float(tstate["best_score"])
        console.print(f"resuming {out} at epoch {start_epoch}, step {start_step} with "
                      f"{world.size} process(es) (saved with {before.get('world_size', 1)})",
                      highlight=False)
    if world.is_main:
        record = config.to_dict()
        record["world_size"], record["device"] = world.size, str(device)
        write_text(out / "config.json", json.dumps(record, indent=2, sort_keys=True, default=str))
        write_text(out / "splits.json", json.dumps(splits_record, indent=2, sort_keys=True))
        for name, labelled in sets.items():
            if labelled is not None:
                write_text(out / "splits" / f"{name}.txt",
                           "".join(r.name + "\n" for r in labelled.records))
        for line in _data_lines(sets):
            console.print(line, highlight=False, markup=False)

    dataset = HAMDataset(train_set, spec, train=True, augment=config.augment, seed=config.seed,
                         resize_factor=config.resize_factor)
    sampler = distributed.StepSampler(len(dataset), config.batch_size, config.accum_steps, world,
                                      seed=config.seed * 100_003, steps=config.limit_batches)
    n_steps = sampler.steps
    if n_steps == 0:
        raise DataError(f"{len(dataset)} training images are fewer than one batch "
                        f"of {config.batch_size}")
    pin = device.type == "cuda" if config.pin_memory is None else config.pin_memory
    workers = config.workers
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 1) // world.local_size)) \
            if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=sampler.micro_batch, sampler=sampler, num_workers=workers,
        collate_fn=_collate, pin_memory=pin,
        persistent_workers=config.persistent_workers and workers > 0,
        prefetch_factor=config.prefetch_factor if workers > 0 else None)

    net: nn.Module = model
    if world.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def batch_sums(tensors):
        return distributed.global_sums(world, tensors)

    size = (spec.input_size, spec.input_size)

    def save_state(epoch: int, step: int) -> None:
        if not world.is_main:
            return
        save_checkpoint(model, spec, last_w, metadata={"epoch": str(epoch), "batch": str(step)})
        _torch_save_atomic({"format": STATE_FORMAT, "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                            "epoch": epoch, "batch": step, "best_score": best_score,
                            "layout": layout}, last_t)

    model.train()
    signals = _Signals()
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, signals.handler)
    epoch, next_step = start_epoch, start_step
    buffers: dict[str, torch.Tensor] | None = None  # BatchNorm statistics at the step's start
    epoch_finished = False
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            sampler.set_epoch(epoch)
            first = start_step if epoch == start_epoch else 0
            sampler.set_start(first)
            next_step = first
            sums = {key: 0.0 for key in LOSS_KEYS}
            seen, data_wait, t0 = 0, 0.0, time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            plain = not console.is_terminal
            batches = iter(loader)
            with _progress(console) as progress:
                task = progress.add_task("train", total=n_steps, completed=first, epoch=epoch,
                                         info="")
                for step in range(first, n_steps):
                    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
                    step_losses = {key: 0.0 for key in LOSS_KEYS}
                    for micro in range(config.accum_steps):
                        tw = time.perf_counter()
                        batch = next(batches)
                        data_wait += time.perf_counter() - tw
                        batch = {k: v.to(device, non_blocking=pin) for k, v in batch.items()}
                        dropout.seeds = [_sample_seed(config.seed, int(e), int(i)) for e, i in
                                         zip(batch["epoch"].tolist(), batch["index"].tolist())]
                        sync = (contextlib.nullcontext() if micro == config.accum_steps - 1
                                or not world.distributed else net.no_sync())
                        with sync:
                            with _autocast(device, config.amp):
                                outputs = net(batch["image"], refine=False)
                            outputs = outputs._replace(**{
                                k: getattr(outputs, k).float() for k in
                                ("anomaly_logit", "class_logits", "anomaly_cam", "class_cams")})
                            outputs = outputs._replace(
                                class_maps=model.refine(outputs.class_cams, size))
                            losses = batch_losses(outputs, batch, config.loss_weights, batch_sums)
                            scaler.scale(losses["total"] / config.accum_steps).backward()
                        for key in LOSS_KEYS:
                            step_losses[key] += losses[key].item() / config.accum_steps
                    with signals.protect():
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                        buffers, next_step = None, step + 1  # this step is done
                    seen += config.batch_size
                    for key in LOSS_KEYS:
                        sums[key] += step_losses[key] * config.batch_size
                    rate = seen / (time.perf_counter() - t0)
                    info = " ".join(f"{k} {sums[k] / seen:.4f}" for k in LOSS_KEYS) \
                        + f" | {rate:.1f} img/s"
                    progress.update(task, advance=1, info=info)
                    if plain and (step % 10 == 0 or step + 1 == n_steps):
                        console.print(f"epoch {epoch} step {step + 1}/{n_steps} {info}",
                                      highlight=False)
                    if config.save_every and next_step % config.save_every == 0 \
                            and next_step < n_steps:
                        save_state(epoch, next_step)
            train_seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {
                "epoch": epoch, "lr": lr, "train_images": seen, "world_size": world.size,
                "train_seconds": round(train_seconds, 2),
                "images_per_second": round(seen / max(train_seconds, 1e-9), 2),
                # Time this rank waited for the loader: near 0 means data loading keeps up.
                "data_wait_seconds": round(data_wait, 3),
                "data_wait_share": round(data_wait / max(train_seconds, 1e-9), 4),
                "loss": {k: sums[k] / max(seen, 1) for k in LOSS_KEYS},
            }
            improved, score = False, best_score
            if val_set is not None and epoch % config.val_every == 0:
                t1 = time.perf_counter()
                result = _validate(model, val_set, spec, config, world, device)
                if world.is_main:
                    from hamedge.evaluation import selection_score

                    score = selection_score(result)
                    entry["val"] = {"summary": result["summary"], "score": score,
                                    "tiou": result["localisation"]["mean"]["tiou"],
                                    "auc": result["classification"]["auc"],
                                    "images": result["num_images"],
                                    "seconds": round(time.perf_counter() - t1, 2)}
                    improved = score > best_score
                    console.print(
                        f"epoch {epoch}: val mean AUC {_f(result['summary']['mean_auc'])}, "
                        f"anomaly AUC {_f(result['summary']['anomaly_auc'])}, mean T(IoU@0.3) "
                        f"{_f(result['summary']['mean_tiou@0.3'])}, score {score:.4f}"
                        f"{' (best)' if improved else ''}", highlight=False)
            console.print(f"epoch {epoch}: {entry['images_per_second']:.1f} images/s over "
                          f"{world.size} process(es); waited {data_wait:.1f} s for data "
                          f"({100 * entry['data_wait_share']:.0f}% of the epoch)",
                          highlight=False)
            # best.safetensors is written before best_score moves, and the scheduler steps only
            # once the epoch's other writes are done: an interrupt anywhere in this tail resumes
            # without losing the best checkpoint or stepping the learning rate twice.
            if world.is_main and (improved or val_set is None):
                save_checkpoint(model, spec, best_w, metadata={
                    "epoch": str(epoch), "val_score": str(score)})
            if improved:
                best_score = score
            if world.is_main:
                _append_history(history, entry)
            scheduler.step()
            epoch_finished = True
            save_state(epoch + 1, 0)
            epoch_finished = False
            start_step = 0
    except BaseException:
        # Keep everything done so far: the current epoch resumes at the step that was next.
        if epoch_finished:
            save_state(epoch + 1, 0)
            epoch, next_step = epoch + 1, 0
        else:
            if buffers is not None:  # mid-step: roll the BatchNorm statistics back
                with torch.no_grad():
                    for name, buf in model.named_buffers():
                        buf.copy_(buffers[name])
            save_state(epoch, next_step)
        if world.is_main:
            console.print(f"[yellow]stopped: resumable state saved to {out} "
                          f"(epoch {epoch}, step {next_step}); rerun with --resume")
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return best_w if best_w.is_file() else last_w


def _validate(model, val_set, spec: ModelSpec, config: TrainConfig, world: distributed.World,
              device: torch.device) -> dict[str, Any] | None:
    """Each rank predicts every world-th validation image; rank 0 scores them all."""
    import torch.distributed as dist

    from hamedge.evaluation import evaluate_part, score_parts

    records = list(val_set.records)[: config.limit_val or None]
    model.eval()
    try:
        part = evaluate_part(torch_predict_fn(model, device, config.amp), records[world.rank::world.size],
                             spec, batch_size=config.val_batch_size)
    finally:
        model.train()
    parts = [part]
    if world.distributed:
        parts = [None] * world.size
        dist.all_gather_object(parts, part, group=world.group)
    return score_parts(parts, spec.class_names) if world.is_main else None


def _data_lines(sets: dict[str, Any]) -> list[str]:
    lines = []
    for name, labelled in sets.items():
        if labelled is None:
            continue
        info = labelled.info
        lines.append(f"{name}: {len(labelled)} images of {info.get('patients', '?')} patient(s) "
                     f"[{info.get('layout', '?')}] {info.get('split_rule', '')}")
    return lines


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"
