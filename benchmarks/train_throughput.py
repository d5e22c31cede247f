"""Training throughput: images/s of `hamedge train` with 1 and 2 processes (gloo, CPU, same global
batch, synchronised BatchNorm), measured side by side in one run, and the data loader alone
(HAMDataset + the distributed sampler, 0 and 2 workers), so one can see whether loading keeps up.

    .venv/bin/python benchmarks/train_throughput.py [--out benchmarks/results/train_cpu]

Writes <out>.json and <out>.md with the machine (CPU model), date, git commit and load average.
On a GPU machine pass --amp bf16 to time mixed precision as well (one process per GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, record_line, run_record


def loader_rate(data: Path, size: int, workers: int, batch: int, steps: int) -> float:
    import torch

    from hamedge.datasets import load_dataset
    from hamedge.spec import ModelSpec
    from hamedge.training.data import HAMDataset
    from hamedge.training.distributed import StepSampler, World
    from hamedge.training.train import _collate

    labelled = load_dataset(data, "train")
    spec = ModelSpec(arch="resnet18", output_stride=32, input_size=size,
                     class_names=labelled.class_names)
    dataset = HAMDataset(labelled, spec, train=True, cache=False)
    sampler = StepSampler(len(dataset), batch, 1, World(), seed=0, steps=steps)
    sampler.set_epoch(1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler,
                                         num_workers=workers, collate_fn=_collate)
    t0 = time.perf_counter()
    n = sum(b["image"].shape[0] for b in loader)
    return n / (time.perf_counter() - t0)


def train_rate(data: Path, out: Path, size: int, nproc: int, batch: int, steps: int,
               amp: str, threads: int | None = None) -> dict:
    args = [sys.executable, "-c", "from hamedge.cli import main; main()", "train", "--data",
            str(data), "--out", str(out), "--output-stride", "32", "--img-size", str(size),
            "--batch-size", str(batch), "--epochs", "1", "--limit-batches", str(steps),
            "--val-split", "none", "--sync-bn", "--lr", "1e-3", "--amp", amp]
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // nproc)
    args += ["--nproc", str(nproc)] if nproc > 1 else ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr)
    entry = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    return {"processes": nproc, "threads_per_process": threads, "images_per_second": entry["images_per_second"],
            "data_wait_share": entry["data_wait_share"], "train_images": entry["train_images"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(RESULTS / "train_cpu"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--amp", default="off")
    args = parser.parse_args()
    from hamedge.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, 120, seed=0, size=512, workers=1)
        rows = {"loader": [], "train": []}
        for workers in (0, 2):
            rows["loader"].append({"workers": workers, "images_per_second": round(
                loader_rate(data, args.size, workers, args.batch, args.steps), 1)})
        for nproc, threads in ((1, None), (1, 1), (2, None)):
            rows["train"].append(train_rate(data, Path(tmp) / f"run{nproc}-{threads}", args.size,
                                            nproc, args.batch, args.steps, args.amp, threads))
    report = {"run": run_record(), "setup": {
        "model": f"resnet18 stride 32, {args.size} px, sync BN", "global_batch": args.batch,
        "steps": args.steps, "amp": args.amp, "data": "120 synthetic 512 px PNGs (decode + resize + augment)"},
        **rows}
    one, two = rows["train"][0]["images_per_second"], rows["train"][-1]["images_per_second"]
    report["train_2_over_1"] = round(two / one, 3) if one else None
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Training throughput", "", record_line(report["run"]), "",
             f"Setup: {report['setup']}", "", "| what | images/s | data wait |", "| --- | --- | --- |"]
    for row in rows["loader"]:
        lines.append(f"| data loader alone, {row['workers']} workers | {row['images_per_second']} | - |")
    for row in rows["train"]:
        lines.append(f"| train, {row['processes']} process(es) x {row['threads_per_process']} "
                     f"thread(s) | {row['images_per_second']} | "
                     f"{100 * row['data_wait_share']:.1f}% |")
    lines.append("")
    lines.append(f"2 processes / 1 process (all cores each): {report['train_2_over_1']}x")
    single = rows["train"][1]["images_per_second"]
    lines.append(f"2 processes / 1 process x 1 thread: {round(two / single, 3) if single else None}x "
                 "(on a shared, oversubscribed machine, OpenMP threads of one process wait for "
                 "each other; compare processes at one thread each)")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
