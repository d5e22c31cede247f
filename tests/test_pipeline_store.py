"""hamedge.pipeline.store: durable rows, torn-line repair, manifest checks, no duplicates."""

from __future__ import annotations

import csv
import json
import os

import pytest

from infer_helpers import write_dicom

from hamedge.errors import HamedgeError
from hamedge.pipeline.store import ResultsStore

CLASSES = ("A", "B")
MANIFEST = {"model_id": "m1", "classes": list(CLASSES), "precision": "fp32"}


def _ok(path: str) -> dict:
    return {"path": path, "status": "ok", "reason": "", "anomaly": 0.7, "width": 10, "height": 20,
            "probabilities": {"A": 0.9, "B": 0.1}, "findings": ["A"]}


def _rows(out):
    with open(out / "results.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    json_rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return csv_rows, json_rows


def test_append_and_reopen(tmp_path):
    with ResultsStore(tmp_path, MANIFEST, CLASSES) as store:
        store.append([_ok("/a.png"), {"path": "/b.png", "status": "error",
                                      "reason": "bad\nfile, really"}])
    csv_rows, json_rows = _rows(tmp_path)
    assert [r["path"] for r in csv_rows] == ["/a.png", "/b.png"]
    assert csv_rows[0]["A"] == "0.900000" and csv_rows[0]["findings"] == "A"
    assert csv_rows[1]["reason"] == "bad file, really" and csv_rows[1]["anomaly"] == ""
    assert json_rows[1]["status"] == "error"
    with ResultsStore(tmp_path, MANIFEST, CLASSES) as store:
        assert store.done == {"/a.png": "ok", "/b.png": "error"}
        assert store.failed == 1


def test_torn_line_and_one_sided_rows_are_repaired(tmp_path):
    with ResultsStore(tmp_path, MANIFEST, CLASSES) as store:
        store.append([_ok("/a.png"), _ok("/b.png")])
    # a kill mid-write: half a JSON line, and a CSV row whose JSON line never got written
    with open(tmp_path / "results.jsonl", "a") as handle:
        handle.write('{"path": "/c.png", "sta')
    with open(tmp_path / "results.csv", "a") as handle:
        handle.write("/d.png,ok,,0.5,0.5,0.5,,1,1\n/e.png,o")
    with ResultsStore(tmp_path, MANIFEST, CLASSES) as store:
        assert set(store.done) == {"/a.png", "/b.png"}
        store.append([_ok("/c.png"), _ok("/d.png")])
    csv_rows, json_rows = _rows(tmp_path)
    assert [r["path"] for r in csv_rows] == ["/a.png", "/b.png", "/c.png", "/d.png"]
    assert [r["path"] for r in json_rows] == ["/a.png", "/b.png", "/c.png", "/d.png"]


def test_other_model_is_refused_and_overwrite_starts_afresh(tmp_path):
    with ResultsStore(tmp_path, MANIFEST, CLASSES) as store:
        store.append([_ok("/a.png")])
    (tmp_path / "heatmaps").mkdir()
    with pytest.raises(HamedgeError, match="model_id differs"):
        ResultsStore(tmp_path, dict(MANIFEST, model_id="m2"), CLASSES)
    with ResultsStore(tmp_path, dict(MANIFEST, model_id="m2"), CLASSES, overwrite=True) as store:
        assert store.done == {}
    assert not (tmp_path / "heatmaps").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["model_id"] == "m2"


def test_results_without_manifest_are_refused(tmp_path):
    (tmp_path / "results.csv").write_text("path\n")
    with pytest.raises(HamedgeError, match="no manifest.json"):
        ResultsStore(tmp_path, MANIFEST, CLASSES)


# -- end to end through `hamedge infer`: heatmap folders per file, non-UTF-8 file names --------

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from infer_helpers import make_bundle

    return make_bundle(tmp_path_factory.mktemp("store") / "tiny.hamedge")


def test_same_stem_and_uid_named_files_get_their_own_heatmap_folders(tiny_bundle, tmp_path):
    import cv2
    import numpy as np

    from hamedge.cli import run_app

    src = tmp_path / "in"
    src.mkdir()
    img = (np.arange(96 * 96).reshape(96, 96) % 251).astype(np.uint8)
    cv2.imwrite(str(src / "a.png"), img)
    cv2.imwrite(str(src / "a.bmp"), 255 - img)
    write_dicom(src / "1.2.3.10", img.astype(np.uint16) * 16)  # DICOM named by UID, no suffix
    write_dicom(src / "1.2.3.11", (255 - img).astype(np.uint16) * 16)
    out = tmp_path / "out"
    args = ["infer", str(src), "--model", str(tiny_bundle), "--out", str(out), "--all-heatmaps",
            "--quiet"]
    assert run_app(args) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["1.2.3.10", "1.2.3.11", "a.bmp",
                                                                 "a.png"]
    folders = {}
    for row in rows:
        assert row["status"] == "ok" and row["heatmaps"]
        dirs = {os.path.dirname(rel) for rel in row["heatmaps"].values()}
        assert len(dirs) == 1
        folders[os.path.basename(row["path"])] = dirs.pop()
        for rel in row["heatmaps"].values():
            assert (out / rel).is_file()
    assert len(set(folders.values())) == 4
    assert folders["1.2.3.10"] == os.path.join("heatmaps", "1.2.3.10")
    assert folders["a.png"] == os.path.join("heatmaps", "a.png")
    # every file written is claimed by exactly one row
    written = {str(p.relative_to(out)) for p in (out / "heatmaps").rglob("*") if p.is_file()}
    claimed = [rel for r in rows for rel in r["heatmaps"].values()]
    assert sorted(claimed) == sorted(written)


def test_stems_are_unique_and_deterministic(tmp_path):
    from pathlib import Path

    from hamedge.pipeline.run import _relative_stems

    names = ["a.png", "a.bmp", "b.png", "1.2.3.10", "1.2.3.11", "c", "c.dcm", "c.dcm.png"]
    files = [tmp_path / n for n in names]
    stems = _relative_stems(files)
    assert len(set(stems.values())) == len(names)
    assert stems[os.path.abspath(tmp_path / "b.png")] == "b"
    assert stems[os.path.abspath(tmp_path / "1.2.3.11")] == "1.2.3.11"
    assert _relative_stems(list(reversed(files))) == stems
    assert all(isinstance(k, str) for k in stems) and not any(Path(s).is_absolute()
                                                            for s in stems.values())


@pytest.mark.skipif(os.name == "nt" or os.uname().sysname == "Darwin",
                    reason="needs a file system that takes any bytes as a name")
def test_non_utf8_file_name_is_stored_and_resumed(tiny_bundle, tmp_path):
    import cv2
    import numpy as np

    from hamedge.cli import run_app

    src = tmp_path / "in"
    src.mkdir()
    img = (np.arange(80 * 80).reshape(80, 80) % 251).astype(np.uint8)
    odd = os.fsdecode(os.fsencode(str(src)) + b"/caf\xe9.png")
    with open(odd, "wb") as handle:
        handle.write(cv2.imencode(".png", img)[1].tobytes())
    cv2.imwrite(str(src / "plain.png"), img)
    out = tmp_path / "out"
    args = ["infer", str(src), "--model", str(tiny_bundle), "--out", str(out), "--all-heatmaps",
            "--quiet"]
    assert run_app(args) == 0
    with open(out / "results.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        csv_rows = list(csv.DictReader(f))
    json_rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in csv_rows) == sorted([os.path.abspath(odd),
                                                         os.path.abspath(src / "plain.png")])
    assert sorted(r["path"] for r in json_rows) == sorted(r["path"] for r in csv_rows)
    assert all(r["status"] == "ok" for r in csv_rows + json_rows)
    assert b"caf\xe9.png" in (out / "results.csv").read_bytes()
    for row in json_rows:
        for rel in row["heatmaps"].values():
            assert os.path.isfile(os.path.join(out, rel))
    before = ((out / "results.csv").read_bytes(), (out / "results.jsonl").read_bytes())
    # resume: both rows count as done, nothing is run or written again
    assert run_app(args) == 0
    after = ((out / "results.csv").read_bytes(), (out / "results.jsonl").read_bytes())
    assert after == before


def test_a_second_concurrent_run_into_the_same_folder_is_refused(tmp_path):
    with ResultsStore(tmp_path, MANIFEST, CLASSES):
        with pytest.raises(HamedgeError, match="another hamedge infer"):
            ResultsStore(tmp_path, MANIFEST, CLASSES)
    # Released on close (and by the OS when a process dies): the next run proceeds.
    with ResultsStore(tmp_path, MANIFEST, CLASSES) as store:
        assert store.done == {}
