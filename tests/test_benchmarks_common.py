"""benchmarks/_common.py: the run record every benchmark script writes, and its timer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402


def test_run_record_says_where_and_when():
    rec = _common.run_record(note="x")
    assert rec["date"].endswith("+00:00") and rec["note"] == "x"
    assert rec["machine"]["cpu"] and rec["machine"]["cores"] >= 1
    assert "numpy" in rec["versions"]
    line = _common.record_line(rec)
    assert rec["machine"]["cpu"] in line and "load average" in line and "shared" in line


def test_time_calls_warms_up_then_times_at_least_min_calls():
    calls = []
    times = _common.time_calls(lambda: calls.append(1), seconds=0.0, min_calls=4, warmup=2)
    assert len(times) == 4 and len(calls) == 6 and (times >= 0).all()


@pytest.mark.parametrize("script", ["export_bench", "fused_refine", "infer_pipeline", "infer_bound"])
def test_scripts_use_the_shared_record(script):
    text = (Path(_common.__file__).parent / f"{script}.py").read_text()
    assert "run_record(" in text and "rev-parse" not in text and "/proc/cpuinfo" not in text
