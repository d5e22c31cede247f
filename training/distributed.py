"""Multi-process training pieces: the process group, synchronised BatchNorm on any device,
batch sums over every rank, the sampler, and the torchrun launcher behind `hamedge train --nproc`.

One process is the special case of all of this (world size 1: no process group, sums are local).

Exactness across process counts: a global batch of B images is split into ``accum`` micro-batches
and each micro-batch over ``world`` ranks. Every batch-level quantity of the losses (sums and
counts the HAM losses divide by) is summed over all ranks with a differentiable all-reduce, so
each rank computes the loss of the whole micro-batch; DDP's gradient averaging then gives exactly
the single-process gradient (the all-reduce's backward multiplies by the world size, DDP divides
by it). With synchronised BatchNorm the normalisation statistics are those of the whole
micro-batch too, so two processes train the same weights as one, up to float summation order.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from hamedge.errors import HamedgeError

ERROR_DIR_ENV = "HAMEDGE_ERROR_DIR"  # set by the launcher: ranks write their one-line error there


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    group: object | None = None  # process group for the loss / BatchNorm sums (separate from DDP's)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """Rank and sizes from torchrun's environment (one process when absent)."""
    def num(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise HamedgeError(f"environment variable {name} is not an integer") from None

    return World(num("RANK", 0), num("WORLD_SIZE", 1), num("LOCAL_RANK", 0),
                 num("LOCAL_WORLD_SIZE", num("WORLD_SIZE", 1)))


def init(device: torch.device, timeout_s: float) -> World:
    """Join the process group torchrun set up (no-op for one process). A collective that waits
    longer than ``timeout_s`` for a peer raises instead of hanging."""
    world = env_world()
    if not world.distributed:
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    group = dist.new_group(backend=backend, timeout=timeout)
    return World(world.rank, world.size, world.local_rank, world.local_size, group)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Sums over the batch and over the ranks


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x. Every rank computes the same function of y, so the gradient
    reaching x is the sum of the ranks' gradients with respect to y (an all-reduce again)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sum_over_ranks(x: torch.Tensor, group) -> torch.Tensor:
    return _SumOverRanks.apply(x, group)


def global_sums(world: World, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over its first (batch) axis, then over all ranks in one differentiable
    all-reduce. Returns tensors of the remaining shapes."""
    local = [t.sum(0) for t in tensors]
    if not world.distributed:
        return local
    flat = torch.cat([t.reshape(-1).float() for t in local])
    total = sum_over_ranks(flat, world.group)
    out, start = [], 0
    for t in local:
        out.append(total[start:start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return out


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch over all ranks, for devices
    torch.nn.SyncBatchNorm refuses (CPU/gloo). Same parameters, buffers and state keys as
    BatchNorm2d; the statistics go through one differentiable all-reduce (sum, sum of squares,
    count), so gradients flow to every rank as with a single large batch."""

    group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        xd = x.double()  # E[x^2] - E[x]^2 cancels badly in float32 when |mean| >> std
        count = torch.full((1,), float(x.numel() // c), device=x.device, dtype=torch.float64)
        stats = torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), count])
        stats = sum_over_ranks(stats, self.group)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises
        mean, var = mean.float(), var.float()
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            self.running_var.mul_(1 - m).add_(var.detach() * float(n / (n - 1)) * m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def sync_batchnorm(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """Every BatchNorm2d synchronised over the ranks: torch.nn.SyncBatchNorm on GPUs, the
    all-reduce version above elsewhere. State keys do not change (checkpoints stay plain HAM)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=world.group)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                new = CrossRankBatchNorm2d(child.num_features, child.eps, child.momentum,
                                           child.affine, child.track_running_stats)
                new.load_state_dict(child.state_dict())
                new.group = world.group if world.distributed else None
                setattr(parent, name, new.to(child.weight.device))
    return model


# ---------------------------------------------------------------------------------------------
# Sampler


class StepSampler(torch.utils.data.distributed.DistributedSampler):
    """DistributedSampler over whole optimiser steps, resumable mid-epoch.

    Epoch e's order is torch.randperm(N) seeded by (seed + e), whatever the number of ranks
    (DistributedSampler's own rule). Only complete global batches are used (BatchNorm needs
    full batches). Global batch s holds order[s*B:(s+1)*B]; its micro-batch m holds the next
    B/accum of those, and rank r takes every world-th image of a micro-batch. ``set_start(s)``
    skips the first s steps. Items are (epoch, index) pairs so that persistent loader workers
    know the epoch of the augmentation they draw."""

    def __init__(self, length: int, global_batch: int, accum: int, world: World, seed: int,
                 steps: int | None = None) -> None:
        super().__init__(range(length), num_replicas=world.size, rank=world.rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.length, self.global_batch, self.accum = length, global_batch, accum
        self.world_size = world.size
        self.steps = min(length // global_batch, steps or length)
        self.start = 0

    @property
    def micro_batch(self) -> int:
        """Images per rank per micro-batch."""
        return self.global_batch // (self.accum * self.world_size)

    def set_start(self, step: int) -> None:
        self.start = step

    def __len__(self) -> int:
        return (self.steps - self.start) * self.global_batch // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        micro = self.global_batch // self.accum
        for step in range(self.start, self.steps):
            for m in range(self.accum):
                begin = step * self.global_batch + m * micro
                for index in order[begin + self.rank:begin + micro:self.world_size]:
                    yield (self.epoch, index)


# ---------------------------------------------------------------------------------------------
# Errors: one line per run


def collective_failure(exc: BaseException) -> bool:
    """True for the errors a rank sees when a peer died or hung (a consequence, not a cause)."""
    name = type(exc).__name__
    text = str(exc).lower()
    return name in ("DistBackendError", "DistNetworkError") or (
        isinstance(exc, RuntimeError) and any(k in text for k in (
            "gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe",
            "socket")))


def report_rank_error(world: World, exc: BaseException) -> bool:
    """Under the launcher, write this rank's one-line error for it to print; True if written."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return False
    from hamedge.errors import HamedgeError as _HE

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = first if isinstance(exc, _HE) else f"{type(exc).__name__}: {first}"
    if isinstance(exc, KeyboardInterrupt):
        text = "stopped by a signal"
    record = {"rank": world.rank, "time": time.time(), "message": text,
              "secondary": collective_failure(exc) or isinstance(exc, KeyboardInterrupt)}
    path = Path(folder) / f"rank-{world.rank}.json"
    path.write_text(json.dumps(record))
    return True


def launch(train_argv: list[str], nproc: int, threads_per_rank: int | None = None) -> int:
    """Run ``python -m hamedge.train TRAIN_ARGV`` on ``nproc`` local processes with torchrun's
    launcher (torch.distributed.run, in this process). A failed rank stops the others (torchrun
    terminates them) and this prints ONE line: the first rank's own error, or how it died."""
    import logging
    import signal as signal_module
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in ("torch.distributed.elastic", "torch.distributed.run",
                 "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    with tempfile.TemporaryDirectory(prefix="hamedge-ranks-") as errors:
        os.environ[ERROR_DIR_ENV] = errors
        args = get_args_parser().parse_args([
            "--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.2",
            "-m", "hamedge.train", *train_argv])
        try:
            run(args)
            return 0
        except ChildFailedError as exc:
            print(f"error: {_failure_line(exc.failures, Path(errors))}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: every rank was stopped (rerun with --resume)", file=sys.stderr)
            return 130
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)
            signal_module.signal(signal_module.SIGTERM, signal_module.SIG_DFL)


def _failure_line(failures: dict, folder: Path) -> str:
    """The cause, not its echoes: a rank's own error first, then a rank that died of a signal,
    then errors that only say a peer went away."""
    reports = {}
    for path in folder.glob("rank-*.json"):
        try:
            data = json.loads(path.read_text())
            reports[int(data["rank"])] = data
        except (OSError, ValueError, KeyError):
            continue
    primary = sorted((r for r in reports.values() if not r["secondary"]), key=lambda r: r["time"])
    if primary:
        r = primary[0]
        return f"rank {r['rank']}: {r['message']} (the other ranks were stopped)"
    for rank, failure in sorted(failures.items(), key=lambda kv: kv[1].timestamp):
        if rank not in reports and failure.exitcode < 0:
            return (f"rank {rank} was killed by {failure.signal_name()}; the run stopped "
                    "(rerun with --resume to continue from the last saved state)")
    if reports:
        r = sorted(reports.values(), key=lambda r: r["time"])[0]
        return f"rank {r['rank']}: {r['message']} (the other ranks were stopped)"
    rank, failure = min(failures.items(), key=lambda kv: kv[1].timestamp)
    return f"rank {rank} exited with code {failure.exitcode}; the run stopped"
