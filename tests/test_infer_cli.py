"""`hamedge infer` as a user runs it: real X-rays in several formats, a battery of broken files,
exit codes, --json, heatmap files, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from infer_helpers import make_bundle, write_dicom
from hamedge.cli import run_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("cli") / "tiny.hamedge")


@pytest.fixture(scope="module")
def xray_folder(tmp_path_factory, nih_images) -> Path:
    """Real X-rays as 8-bit PNG, 16-bit PNG, RGB/RGBA PNG, JPEG, DICOM, non-square and large,
    plus broken files and things that must be skipped."""
    root = tmp_path_factory.mktemp("xrays")
    gray = cv2.imread(str(nih_images[0]), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(gray, (256, 256), interpolation=cv2.INTER_AREA)
    (root / "png").mkdir()
    shutil.copy(nih_images[1], root / "png" / "full_1024.png")
    cv2.imwrite(str(root / "png" / "small8.png"), small)
    cv2.imwrite(str(root / "png" / "small16.png"), small.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "png" / "rgb.png"), cv2.cvtColor(small, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(root / "png" / "rgba.png"), cv2.cvtColor(small, cv2.COLOR_GRAY2BGRA))
    cv2.imwrite(str(root / "png" / "wide.png"), cv2.resize(gray, (300, 180)))
    cv2.imwrite(str(root / "png" / "large.png"), cv2.resize(gray, (2400, 2000)))
    cv2.imwrite(str(root / "photo.jpg"), small)
    (root / "dicom").mkdir()
    write_dicom(root / "dicom" / "mono2.dcm", small.astype(np.uint16) * 16)
    write_dicom(root / "dicom" / "mono1", 4095 - small.astype(np.uint16) * 16, "MONOCHROME1")
    # broken ones
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    data = (root / "png" / "small8.png").read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) // 2])
    (bad / "text.png").write_text("this is not an image\n")
    write_dicom(bad / "nopixels.dcm", None)
    (bad / "dir.png").mkdir()  # a folder named like an image: walked, holds nothing
    (bad / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    # skipped: hidden and non-image
    (root / ".hidden.png").write_bytes(data)
    (root / "notes.txt").write_text("not an image")
    return root


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_run_battery_and_exit_code(bundle_dir, xray_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_app(["infer", str(xray_folder), "--model", str(bundle_dir), "--out", str(out),
                    "--batch", "3", "--quiet"])
    assert code == 1  # some inputs failed
    rows = {Path(r["path"]).name: r for r in _read_csv(out / "results.csv")}
    good = {"full_1024.png", "small8.png", "small16.png", "rgb.png", "rgba.png", "wide.png",
            "large.png", "photo.jpg", "mono2.dcm", "mono1"}
    broken = {"zero.png", "truncated.png", "text.png", "nopixels.dcm", "random.jpg"}
    assert set(rows) == good | broken
    for name in good:
        assert rows[name]["status"] == "ok", (name, rows[name]["reason"])
        assert 0.0 <= float(rows[name]["anomaly"]) <= 1.0
    for name in broken:
        assert rows[name]["status"] == "error" and rows[name]["reason"], name
        assert "\n" not in rows[name]["reason"]
    assert "empty" in rows["zero.png"]["reason"]
    assert rows["wide.png"]["width"] == "300" and rows["wide.png"]["height"] == "180"
    # same pixels, same probabilities: 8-bit PNG vs RGB vs RGBA
    assert rows["rgb.png"]["Mass"] == rows["small8.png"]["Mass"] == rows["rgba.png"]["Mass"]
    # 16-bit of the same image: within float rounding of the 8-bit one
    assert abs(float(rows["small16.png"]["Mass"]) - float(rows["small8.png"]["Mass"])) < 1e-3
    # MONOCHROME1 inverted pixels read back as the MONOCHROME2 image
    assert abs(float(rows["mono1"]["Mass"]) - float(rows["mono2.dcm"]["Mass"])) < 1e-4
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows)
    # overlays only for positive findings, at the image's size
    wide = next(x for x in lines if x["path"].endswith("wide.png"))
    assert set(wide["heatmaps"]) == set(wide["findings"]) | ({"anomaly"} if wide["anomalous"] else set())
    for name, rel in wide["heatmaps"].items():
        img = cv2.imread(str(out / rel))
        assert img.shape == (180, 300, 3), name
        assert all(b["x"] + b["w"] <= 300 and b["y"] + b["h"] <= 180 for b in wide["boxes"][name])
    capsys.readouterr()


def test_exit_zero_json_and_npy(bundle_dir, nih_images, tmp_path, capsys):
    out = tmp_path / "o"
    code = run_app(["infer", str(nih_images[0]), str(nih_images[1]), "--model", str(bundle_dir),
                    "--json", "--out", str(out), "--heatmaps", "npy", "--all-heatmaps", "--quiet"])
    assert code == 0
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(p["path"]).name for p in printed] == [nih_images[0].name, nih_images[1].name]
    assert len(printed[0]["probabilities"]) == 14
    assert len(printed[0]["heatmaps"]) == 15  # --all-heatmaps: anomaly + 14 classes
    heat = np.load(out / printed[0]["heatmaps"]["Mass"])
    assert heat.shape == (1024, 1024) and 0.0 <= heat.min() and heat.max() <= 1.0


def test_fatal_errors_exit_2(bundle_dir, tmp_path, capsys):
    assert run_app(["infer", str(tmp_path / "missing"), "--model", str(bundle_dir)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run_app(["infer", str(tmp_path / "empty"), "--model", str(bundle_dir),
                    "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert run_app(["infer", str(tmp_path), "--model", str(tmp_path / "nobundle")]) == 2
    assert run_app(["infer", str(tmp_path), "--model", str(bundle_dir), "--batch", "0"]) == 2


def test_glob_filters(bundle_dir, xray_folder, tmp_path, capsys):
    out = tmp_path / "g"
    code = run_app(["infer", str(xray_folder), "--model", str(bundle_dir), "--out", str(out),
                    "--glob", "*.dcm", "--heatmaps", "none", "--quiet"])
    rows = _read_csv(out / "results.csv")
    assert sorted(Path(r["path"]).name for r in rows) == ["mono2.dcm", "nopixels.dcm"]
    assert code == 1
    assert not (out / "heatmaps").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files without read permission")
def test_unreadable_file_is_an_error_row(bundle_dir, nih_images, tmp_path, capsys):
    target = tmp_path / "in" / "locked.png"
    target.parent.mkdir()
    shutil.copy(nih_images[0], target)
    target.chmod(0)
    try:
        assert run_app(["infer", str(target.parent), "--model", str(bundle_dir),
                        "--out", str(tmp_path / "o"), "--quiet"]) == 1
    finally:
        target.chmod(0o644)
    row = _read_csv(tmp_path / "o" / "results.csv")[0]
    assert row["status"] == "error" and "permission" in row["reason"].lower()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_one_row_per_input(bundle_dir, nih_images, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    gray = cv2.resize(cv2.imread(str(nih_images[0]), cv2.IMREAD_GRAYSCALE), (160, 160))
    for i in range(120):
        cv2.imwrite(str(src / f"img{i:03d}.png"), np.roll(gray, i, axis=1))
    (src / "broken.png").write_bytes(b"\x89PNG junk")
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from hamedge.cli import main; main()", "infer", str(src), "--model", str(bundle_dir),
           "--out", str(out), "--batch", "2", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    csv_path = out / "results.csv"
    while time.time() < deadline:
        if csv_path.exists() and csv_path.read_bytes().count(b"\n") > 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = csv_path.read_bytes().count(b"\n") - 1
    assert 0 < first < 121, "the kill should land mid-run"
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stderr  # the broken file
    rows = _read_csv(csv_path)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 121
    jsonl = [json.loads(x)["path"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(jsonl) == sorted(paths)
    assert sum(r["status"] == "error" for r in rows) == 1
    # overlays are complete files (atomic writes), none left half-written
    assert not list(out.rglob(".*.tmp"))
