"""``hamedge bench --server URL``: the load generator's levels as a table, results.json-like
``server.json`` and ``server.md`` with the machine, date and load recorded. No torch."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from hamedge.errors import HamedgeError
from hamedge.fsutil import write_text


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def _levels(text: str) -> list[int]:
    try:
        levels = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise HamedgeError(f"--concurrency must be integers separated by commas, not {text!r}") \
            from None
    if not levels or levels[0] < 1 or levels[-1] > 1024:
        raise HamedgeError("--concurrency levels must be between 1 and 1024")
    return levels


def _sample_files(samples: Path | None, work: Path) -> list[Path]:
    from hamedge.io import find_images

    if samples is None:
        shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nih-samples" / "images"
        if shared.is_dir():
            samples = shared
        else:
            from hamedge.synth import generate

            generate(work / "synth", count=8, seed=0, size=512)
            samples = work / "synth" / "images"
    files, _ = find_images(samples) if samples.is_dir() else ([samples], {})
    if not files:
        raise HamedgeError(f"no images in {samples}")
    return files[:32]


def bench_server(url: str, concurrency: str, mode: str, samples: Path | None, seconds: float,
                 out: Path, console) -> list:
    from rich.table import Table

    from hamedge.client import IMAGE_MODEL, TENSOR_MODEL, Client
    from hamedge.serve.loadgen import COLUMNS, markdown, run_load

    levels = _levels(concurrency)
    if mode not in ("image", "tensor"):
        raise HamedgeError("--server-model must be image or tensor")
    with tempfile.TemporaryDirectory() as tmp:
        files = _sample_files(samples, Path(tmp))
        if mode == "image":
            payloads, model = [f.read_bytes() for f in files], IMAGE_MODEL
        else:
            import numpy as np

            from hamedge.io import read_image
            from hamedge.preprocess import preprocess

            with Client(url) as client:
                served = client.served_model()
            payloads = [preprocess(read_image(f), served.spec, served.input_shape[0])[None]
                        .astype(np.float32) for f in files]
            model = TENSOR_MODEL
    header = [f"server {url}, model {model} ({mode}), {len(payloads)} distinct inputs, "
              f"{seconds:g} s per level",
              f"client machine: {machine()}; load average before: "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
              f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"]
    for line in header:
        console.print(line, highlight=False)
    results = run_load(url, levels, payloads, model, seconds,
                       log=lambda text: console.print(text, highlight=False))
    table = Table(title="served latency and throughput")
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i == 0 else "right")
    for r in results:
        table.add_row(*r.row())
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "server.json", json.dumps({"header": header, "levels": [r.to_dict()
                                                                          for r in results]},
                                              indent=2) + "\n")
    write_text(out / "server.md", markdown(results, header))
    console.print(f"wrote {out / 'server.json'}, {out / 'server.md'}", highlight=False)
    return results
