"""What the input gate costs a folder run of PNGs: `hamedge infer` with the gate (header check,
out-of-distribution score) against `--accept-any`, alternating in one process on one machine.

    .venv/bin/python benchmarks/gate_overhead.py [--count 300] [--rounds 3]
    -> benchmarks/results/gate_overhead.{md,json}
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from _common import RESULTS, record_line, run_record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from hamedge import synth
    from hamedge.bundle import Bundle
    from hamedge.export import ExportOptions, export_bundle
    from hamedge.gate import GateSettings
    from hamedge.pipeline import InferOptions, run_inference
    from hamedge.pipeline.run import usable_ood
    from hamedge.runtime import open_backend

    record = run_record(script="benchmarks/gate_overhead.py", images=args.count, rounds=args.rounds)
    speeds: dict[str, list[float]] = {"gate on": [], "--accept-any": []}
    with tempfile.TemporaryDirectory() as tmp:
        export_bundle(None, ExportOptions(out=Path(tmp) / "b"), log=lambda *_: None)
        bundle = Bundle.open(Path(tmp) / "b")
        synth.generate(Path(tmp) / "data", args.count, seed=7, size=512)
        images = Path(tmp) / "data" / "images"
        with open_backend(bundle, "onnxruntime") as backend:
            ood = usable_ood(bundle, backend)
            for round_ in range(args.rounds):
                for name, settings in (("gate on", GateSettings()),
                                       ("--accept-any", GateSettings(accept_any=True))):
                    options = InferOptions(batch=8, heatmaps="none", gate=settings)
                    summary = run_inference([images], backend, Path(tmp) / f"o{round_}{name}",
                                            options, "bench", ood=ood)
                    speeds[name].append(summary.images_per_second)
    medians = {k: float(np.median(v)) for k, v in speeds.items()}
    ratio = medians["gate on"] / medians["--accept-any"]
    result = {"record": record, "images_per_second": speeds, "median": medians,
              "gate_on_over_off": ratio}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gate_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    text = "\n".join([
        "# Input gate: cost on a folder run of PNGs", "",
        f"Measured {record_line(record)}", "",
        f"{args.count} synthetic 512 px PNGs, demo model, ONNX Runtime fp32, batch 8, no heatmap "
        f"files, {args.rounds} rounds alternating in one process; images/s per round:", "",
        *(f"- {k}: {', '.join(f'{s:.1f}' for s in v)} (median {medians[k]:.1f})"
          for k, v in speeds.items()), "",
        f"Gate on / off: {ratio:.3f} (the goal: no more than 5% slower, i.e. >= 0.95)."])
    (RESULTS / "gate_overhead.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
