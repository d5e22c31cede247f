"""benchmarks/gpu_acceptance.sh, the one-call script for a lent GPU machine: its --dry-run mode
runs the same logic on the CPU (Triton interpreted, tiny sizes), and its parsers and float64
reference are checked here, so the script works when a GPU is finally lent."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.sh"


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", ROOT / "benchmarks" / "gpu_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_float64_reference_is_the_refinement():
    from hamedge.ops.refine import refine_reference

    driver = _driver()
    rng = np.random.default_rng(7)
    maps = driver.random_maps(rng, 2, 3, 5, 9)
    got = driver.refine_f64(maps, 33, 70)
    assert got.dtype == np.float64 and got.shape == (2, 3, 33, 70)
    assert np.abs(got - refine_reference(maps, (33, 70))).max() < 1e-4
    assert np.all(got[-1, -1] == got[-1, -1, 0, 0])  # the constant map stays constant


def test_harness_lines_parse():
    driver = _driver()
    text = ("ok   n=15 16x16 -> 512x512 max|diff|=1.19e-07 (err 0)\n"
            "FAIL n=2 1x5 -> 9x17 max|diff|=0.5 (err 700)\nnoise\n")
    rows = driver.parse_harness(text)
    assert [r["ok"] for r in rows] == [True, False]
    assert rows[0]["n"] == 15 and rows[0]["out"] == [512, 512] and rows[0]["max_abs"] == pytest.approx(1.19e-7)
    assert rows[1]["low"] == [1, 5] and rows[1]["cuda_error"] == 700


@pytest.mark.slow
def test_dry_run_exercises_every_section(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, HAMEDGE_COMMIT="test")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| onnxruntime | ok")  # the table comes last
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["env"]["dry_run"] and results["env"]["triton_interpret"]
    assert results["env"]["commit"] == "test"
    triton = results["triton"]
    assert triton["status"] == "ok" and len(triton["checks"]) == 3
    for row in triton["checks"]:
        assert row["float32"]["max_abs_vs_f64"] < 1e-3 and row["float32"]["unwritten"] == 0
        assert row["uint8"]["max_abs_vs_f64"] <= 1
    assert triton["timing"][0]["triton_fp32"]["median_ms"] > 0
    assert results["cuda_kernel"]["status"].startswith("skipped")
    assert results["torch"]["fp32"]["parity"]["status"] == "ok"
    assert results["torch"]["fp32"]["batches"]["2"]["model_only_images_per_s"] > 0
    assert results["torch"]["resnet50_s8_512"]["status"] == "ok"
    assert results["onnxruntime"]["parity"]["status"] == "ok"
    assert (tmp_path / "table.md").is_file() and (tmp_path / "machine.txt").is_file()


@pytest.mark.parametrize("code, expected", [(0, "ok"), (1, "FAIL")])
def test_cuda_section_runs_the_harness_and_reads_its_verdict(tmp_path, code, expected):
    import types

    import torch

    driver = _driver()
    verdict = "ok  " if code == 0 else "FAIL"
    harness = tmp_path / "fused_refine_test"
    harness.write_text(f"#!/bin/sh\necho '{verdict} n=15 16x16 -> 512x512 max|diff|=1e-07 (err 0)'\nexit {code}\n")
    harness.chmod(0o755)
    args = types.SimpleNamespace(harness=str(harness), cuda_lib=None, build_done=None, harness_why=None,
                                 out=str(tmp_path))
    result = driver.section_cuda_kernel(args, torch.device("cpu"), None, {}, driver.Budget(60))
    assert result["harness"]["status"] == expected and result["harness"]["exit_code"] == code
    assert result["status"] == expected
    assert result["kernel"]["status"].startswith("skipped")
    assert "512x512" in (tmp_path / "cuda_harness.txt").read_text()
