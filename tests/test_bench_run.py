"""`hamedge bench` end to end on a tiny bundle (resnet18, 64 px, random weights): every CPU
configuration against the eager baseline, results.json/md, plots, the page, --compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from infer_helpers import TINY_SPEC, make_bundle
from hamedge.cli import run_app


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bench") / "tiny.hamedge", int8=True)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """Real X-rays when the shared data is there, else two made-up gray PNGs."""
    import os

    shared = Path(os.environ.get("HAMEDGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    real = shared / "nih-samples" / "images"
    if real.is_dir():
        return real
    from PIL import Image

    folder = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (200, 180), dtype=np.uint8)).save(folder / f"s{i}.png")
    return folder


@pytest.fixture(scope="module")
def latency_run(bundle, samples, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    code = run_app(["bench", "--model", str(bundle), "--samples", str(samples), "--no-accuracy",
                    "--batch-sizes", "1,2", "--warmup", "1", "--iterations", "4", "--out", str(out), "--threads", "1",
                    "--cache-dir", str(out / "cache")])
    assert code == 0
    return out


def test_every_cpu_configuration_is_timed_against_eager(latency_run):
    res = json.loads((latency_run / "results.json").read_text())
    assert res["format"] == "hamedge-bench/1"
    assert res["machine"]["cores"] >= 1 and res["machine"]["cpu"]
    assert res["model"]["arch"] == "resnet18" and res["model"]["input_size"] == TINY_SPEC.input_size
    configs = {(e["backend"], e["precision"]) for e in res["latency"]}
    assert {("torch-eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
            ("torch", "fp32")} <= configs
    # x batch sizes x modes (model, e2e), plus the pipelined "infer" mode for the deployed backends
    assert len(res["latency"]) == len(configs) * 2 * 2 + (len(configs) - 1) * 2
    for e in res["latency"]:
        s = e["stats"]
        n = 3 if e["mode"] == "infer" else 4  # whole pipeline runs: at most 3 samples
        per_call = e.get("files_per_call", e["batch"])
        assert s["samples"] == n and len(s["raw_ms"]) == n
        assert 0 < s["min_ms"] <= s["median_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["throughput"] == pytest.approx(per_call * n / (sum(s["raw_ms"]) / 1e3), rel=1e-3)
        base_mode = "e2e" if e["mode"] == "infer" else e["mode"]
        assert e["speedup"] == pytest.approx(
            s["throughput"] / next(b["stats"]["throughput"] for b in res["latency"] if b["baseline"]
                                   and b["batch"] == e["batch"] and b["mode"] == base_mode))
        assert (e["baseline"]) == (e["backend"] == "torch-eager")
    infer = [e for e in res["latency"] if e["mode"] == "infer"]
    assert {e["files_per_call"] for e in infer} == {16}
    notes = " ".join(res["notes"])
    assert "tensorrt" in notes  # not run here, and the report says so
    # fp16 on a CPU is refused by the torch backend, so it is listed as not run; onnxruntime
    # does not declare fp16, so it is not a configuration at all
    assert "torch/fp16 not run" in notes and "onnxruntime/fp16" not in notes


def test_outputs_are_written(latency_run):
    for name in ("results.json", "results.md", "report.html", "latency_distribution.png",
                 "throughput_vs_batch.png"):
        assert (latency_run / name).stat().st_size > 0, name
    md = (latency_run / "results.md").read_text()
    assert "onnxruntime/int8" in md and "p99 ms" in md
    overlays = json.loads((latency_run / "results.json").read_text())["overlays"]
    assert {o["config"] for o in overlays} >= {"torch-eager/fp32", "onnxruntime/int8"}
    assert all((latency_run / o["file"]).is_file() for o in overlays)


def test_compare_two_runs(latency_run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    res = json.loads((latency_run / "results.json").read_text())
    for e in res["latency"]:
        if e["backend"] == "onnxruntime" and e["precision"] == "int8":
            e["stats"]["throughput"] *= 2
    other = latency_run / "b.json"
    other.write_text(json.dumps(res))
    assert run_app(["bench", "--compare", str(latency_run / "results.json"), str(other)]) == 0
    text = capsys.readouterr().out
    assert "2.00x faster" in text and "onnxruntime/int8" in text


def test_user_mistakes_are_one_line(bundle, tmp_path, capsys):
    assert run_app(["bench", "--model", str(bundle), "--batch-sizes", "0", "--out", str(tmp_path)]) != 0
    assert run_app(["bench", "--model", str(bundle), "--backends", "nope", "--no-accuracy",
                    "--out", str(tmp_path)]) != 0
    assert run_app(["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("error: ") == 3



def test_page_of_a_real_run_renders_offline(latency_run, tmp_path):
    import re

    from test_bench_report import dump_dom

    page = (latency_run / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    dom = dump_dom(latency_run / "report.html", tmp_path)
    status = re.search(r'id="render-status"[^>]*', dom).group(0)
    images = int(re.search(r'data-images="(\d+)"', status).group(1))
    assert images >= 2 + 4  # two plots (no accuracy run) and overlays for 4 configurations
    assert int(re.search(r'data-rendered="(\d+)"', status).group(1)) == images
    assert int(re.search(r'data-tables="(\d+)"', status).group(1)) >= 16


def test_eager_baseline_preprocessing_is_the_reference_rule(samples):
    """The baseline times the reference's own path (PIL RGB resize); it must produce exactly the
    input hamedge.preprocess gives, or the two would not be doing the same work."""
    from hamedge.bench.eager import reference_preprocess
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess
    from hamedge.spec import ModelSpec

    spec = ModelSpec(input_size=96)
    path = sorted(samples.glob("*.png"))[0]
    ref = reference_preprocess(path, spec)
    assert ref.shape == (3, 96, 96) and ref.dtype == np.float32
    np.testing.assert_array_equal(ref, preprocess(read_image(path), spec))
