"""The HAM training loop: Adam + step decay, the five losses, validation, resumable checkpoints.

Output folder:
  last.safetensors   weights after the latest finished epoch (or at an interruption)
  last.train.pt      optimiser, scheduler, epoch/batch position, RNG states, best score; read
                     back with torch.load(weights_only=True) on --resume
  best.safetensors   the epoch with the highest validation score (selection rule below)
  history.jsonl      one JSON line per epoch: losses, lr, images/s, validation metrics
  config.json        the configuration of the run

Selection rule for best.safetensors: mean AUC + mean T(IoU@0.3) on the validation split
(hamedge.evaluation.selection_score); the test split is never looked at while training.

Determinism: every epoch's shuffling is seeded by (seed, epoch) and the global RNGs are reseeded
at each epoch start, so an interrupted run resumed with --resume replays the same batch order
from the batch where it stopped, bit for bit (tested): augmentation is seeded by (seed, epoch,
image), dropout's RNG state and the BatchNorm statistics of an interrupted batch are restored.
A resumed run takes --epochs and the lr schedule (--lr-step, --lr-gamma) of the new invocation.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hamedge.errors import DataError, HamedgeError
from hamedge.fsutil import write_bytes, write_text
from hamedge.spec import ModelSpec
from hamedge.training.losses import LossWeights, batch_losses

LOSS_KEYS = ("ano", "cls", "ex_cls", "bound", "union", "total")


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "resnet18"
    output_stride: int = 16
    input_size: int = 256
    class_names: tuple[str, ...] | None = None  # None: the data set's classes
    description: str = ""
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-5  # the reference's (fine-tuning a pretrained backbone); ~1e-3 from scratch
    weight_decay: float = 1e-4
    lr_step: int = 10  # multiply the lr by lr_gamma every lr_step epochs (StepLR)
    lr_gamma: float = 0.1
    loss_weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    workers: int = 0
    train_split: str = "train"
    val_split: str = "val"
    augment: bool = True
    limit_batches: int | None = None  # per epoch, for smoke tests
    limit_val: int | None = None  # validation images, for smoke tests
    val_batch_size: int = 32
    resume: bool = False
    threads: int | None = None  # torch threads; None: os.cpu_count()

    def spec(self, class_names: tuple[str, ...]) -> ModelSpec:
        return ModelSpec(arch=self.arch, output_stride=self.output_stride,
                         input_size=self.input_size, class_names=tuple(class_names),
                         description=self.description)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["loss_weights"] = self.loss_weights.to_dict()
        return data


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": repr(random.getstate())}


def _set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(ast.literal_eval(state["python"]))


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


def torch_predict_fn(model: torch.nn.Module):
    """predict_fn for hamedge.evaluation.run_evaluation from a torch HAM: sigmoid probabilities
    and raw CAMs (anomaly first), the exported graphs' outputs."""
    def predict(batch: np.ndarray):
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(batch)), refine=False)
        return tuple(t.numpy() for t in out.graph_outputs())
    return predict


def load_split(root: str | os.PathLike, split: str, class_names=None):
    """A labelled split of an NIH-layout folder, with one-line errors for user mistakes."""
    from hamedge.datasets import load_nih_layout

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} not found")
    labelled = load_nih_layout(root, split=split, class_names=class_names)
    if not labelled.records:
        raise DataError(f"split {split!r} of {root} has no images")
    return labelled


def _validate(model, val_set, spec: ModelSpec, config: TrainConfig) -> dict[str, Any]:
    from hamedge.evaluation import run_evaluation

    model.eval()
    try:
        return run_evaluation(torch_predict_fn(model), val_set, spec,
                              batch_size=config.val_batch_size, limit=config.limit_val)
    finally:
        model.train()


def _progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"), console=console, transient=False)


def train(config: TrainConfig, console=None) -> Path:
    """Train per ``config``; returns the path of best.safetensors (last.safetensors when no
    validation split exists). Ctrl-C saves a resumable checkpoint and re-raises."""
    from rich.console import Console

    from hamedge.model.checkpoint import load_checkpoint, save_checkpoint
    from hamedge.model.network import HAM
    from hamedge.training.data import HAMDataset

    console = console or Console(stderr=True)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    last_w, last_t, best_w = out / "last.safetensors", out / "last.train.pt", out / "best.safetensors"
    history = out / "history.jsonl"

    train_set = load_split(config.data, config.train_split, config.class_names)
    class_names = tuple(train_set.class_names)
    try:
        val_set = load_split(config.data, config.val_split, class_names)
    except DataError:
        val_set = None
        console.print(f"[yellow]no {config.val_split!r} split: best.safetensors = last epoch")
    spec = config.spec(class_names)

    _seed_all(config.seed)
    model = HAM(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step,
                                                gamma=config.lr_gamma)
    start_epoch, start_batch, best_score = 1, 0, -float("inf")
    resume_rng = None
    if config.resume:
        if not (last_w.is_file() and last_t.is_file()):
            raise HamedgeError(f"nothing to resume in {out} (no last.safetensors/last.train.pt)")
        saved_spec, state, _ = load_checkpoint(last_w)
        if not saved_spec.same_architecture(spec):
            raise HamedgeError(f"{last_w} is a {saved_spec.arch} with {saved_spec.num_classes} "
                               f"classes, not this run's {spec.arch} with {spec.num_classes}")
        model.load_state_dict(state)
        tstate = torch.load(last_t, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(tstate["optimizer"])
        scheduler.load_state_dict(tstate["scheduler"])
        # The schedule of this invocation wins (a run may be resumed with a shorter plan).
        scheduler.step_size, scheduler.gamma = config.lr_step, config.lr_gamma
        start_epoch, start_batch = tstate["epoch"], tstate["batch"]
        best_score = tstate["best_score"]
        resume_rng = tstate.get("rng")
        console.print(f"resuming {out} at epoch {start_epoch}, batch {start_batch}")
    write_text(out / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True))

    dataset = HAMDataset(train_set, spec, train=True, augment=config.augment, seed=config.seed)
    n_batches = len(dataset) // config.batch_size  # drop the last partial batch (BatchNorm)
    if n_batches == 0:
        raise DataError(f"{len(dataset)} training images are fewer than one batch "
                        f"of {config.batch_size}")
    if config.limit_batches:
        n_batches = min(n_batches, config.limit_batches)
    size = (spec.input_size, spec.input_size)

    def save_state(epoch: int, batch: int, rng: dict | None = None) -> None:
        save_checkpoint(model, spec, last_w, metadata={"epoch": str(epoch), "batch": str(batch)})
        _torch_save_atomic({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "epoch": epoch, "batch": batch, "best_score": best_score,
                            "rng": rng or _rng_state()}, last_t)

    model.train()
    epoch, batch_index = start_epoch, start_batch
    # `kill` (SIGTERM) saves a resumable state like Ctrl-C does: handy for background runs.
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    # Where a Ctrl-C resumes: the first batch not yet applied, with the RNG state it started from.
    batch_rng, next_batch = None, start_batch
    epoch_finished = False  # set while the end-of-epoch state is being saved
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            seed = _epoch_seed(config.seed, epoch)
            _seed_all(seed)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
            order = order[: n_batches * config.batch_size].tolist()
            first = start_batch if epoch == start_epoch else 0
            next_batch = first
            if resume_rng is not None and epoch == start_epoch and first > 0:
                _set_rng_state(resume_rng)
            subset = torch.utils.data.Subset(dataset, order[first * config.batch_size:])
            loader = torch.utils.data.DataLoader(
                subset, batch_size=config.batch_size, shuffle=False, drop_last=True,
                num_workers=config.workers, collate_fn=_collate, persistent_workers=False,
                # its own generator: creating the iterator must not draw from the global RNG,
                # or a resumed epoch's dropout masks would shift
                generator=torch.Generator().manual_seed(seed))
            sums = {key: 0.0 for key in LOSS_KEYS}
            seen, t0 = 0, time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            plain = not console.is_terminal
            with _progress(console) as progress:
                task = progress.add_task("train", total=n_batches, completed=first, epoch=epoch,
                                         info="")
                for batch_index, batch in enumerate(loader, start=first):
                    if batch_index >= n_batches:
                        break
                    batch_rng, next_batch = _rng_state(), batch_index
                    # The forward pass updates BatchNorm running statistics: keep them to undo a
                    # batch interrupted before its optimiser step.
                    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
                    outputs = model(batch["image"], refine=False)
                    outputs = outputs._replace(class_maps=model.refine(outputs.class_cams, size))
                    losses = batch_losses(outputs, batch, config.loss_weights)
                    optimizer.zero_grad(set_to_none=True)
                    losses["total"].backward()
                    optimizer.step()
                    batch_rng, next_batch = None, batch_index + 1  # this batch is done
                    bs = batch["image"].shape[0]
                    seen += bs
                    for key in LOSS_KEYS:
                        sums[key] += losses[key].item() * bs
                    rate = seen / (time.perf_counter() - t0)
                    info = " ".join(f"{k} {sums[k] / seen:.4f}" for k in LOSS_KEYS) \
                        + f" | {rate:.1f} img/s"
                    progress.update(task, advance=1, info=info)
                    if plain and (batch_index % 10 == 0 or batch_index + 1 == n_batches):
                        console.print(f"epoch {epoch} batch {batch_index + 1}/{n_batches} {info}",
                                      highlight=False)
            batch_index = n_batches
            train_seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {
                "epoch": epoch, "lr": lr, "train_images": seen,
                "train_seconds": round(train_seconds, 2),
                "images_per_second": round(seen / max(train_seconds, 1e-9), 2),
                "loss": {k: sums[k] / max(seen, 1) for k in LOSS_KEYS},
            }
            improved = False
            if val_set is not None:
                t1 = time.perf_counter()
                result = _validate(model, val_set, spec, config)
                from hamedge.evaluation import selection_score

                score = selection_score(result)
                entry["val"] = {"summary": result["summary"], "score": score,
                                "tiou": result["localisation"]["mean"]["tiou"],
                                "auc": result["classification"]["auc"],
                                "seconds": round(time.perf_counter() - t1, 2)}
                improved = score > best_score
                console.print(f"epoch {epoch}: val mean AUC {_f(result['summary']['mean_auc'])}"
                              f", anomaly AUC {_f(result['summary']['anomaly_auc'])}"
                              f", mean T(IoU@0.3) {_f(result['summary']['mean_tiou@0.3'])}"
                              f", score {score:.4f}{' (best)' if improved else ''}",
                              highlight=False)
            # best.safetensors is written before best_score moves, and the scheduler steps only
            # once the epoch's other writes are done: an interrupt anywhere in this tail resumes
            # without losing the best checkpoint or stepping the learning rate twice.
            if improved or val_set is None:
                save_checkpoint(model, spec, best_w, metadata={
                    "epoch": str(epoch), "val_score": str(score if improved else best_score)})
            if improved:
                best_score = score
            _append_history(history, entry)
            scheduler.step()  # after validation: a Ctrl-C during validation resumes cleanly
            epoch_finished = True
            save_state(epoch + 1, 0)
            epoch_finished = False
            start_batch = 0
    except KeyboardInterrupt:
        # Keep everything done so far: the current epoch resumes at the batch that was next.
        if epoch_finished:  # interrupted while saving the end of an epoch: the next one starts
            save_state(epoch + 1, 0)
            epoch, next_batch = epoch + 1, 0
        else:
            if batch_rng is not None:  # mid-batch: roll the BatchNorm statistics back
                with torch.no_grad():
                    for name, buf in model.named_buffers():
                        buf.copy_(buffers[name])
            save_state(epoch, next_batch, batch_rng)
        console.print(f"[yellow]interrupted: resumable state saved to {out} "
                      f"(epoch {epoch}, batch {next_batch}); rerun with --resume")
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return best_w if best_w.is_file() else last_w


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"
