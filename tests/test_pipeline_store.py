"""hamedge.pipeline.store: durable rows, torn-line repair, manifest checks, no duplicates."""

from __future__ import annotations

import csv
import json

import pytest

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
