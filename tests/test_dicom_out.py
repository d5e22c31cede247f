"""`hamedge infer --dicom-out`: a TID 1500 Comprehensive SR and an overlay Secondary Capture per
DICOM input, read back with pydicom and highdicom and checked against the source and the results;
DICOM validators (dicom3tools' dciodvfy, dcmtk's dsrdump) run where installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("highdicom")
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from pydicom import uid  # noqa: E402

from dicom_corpus import corpus_file  # noqa: E402
from hamedge.cli import run_app  # noqa: E402
from infer_helpers import make_bundle, write_dicom  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("dout") / "tiny.hamedge")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A built chest DX (with a gradient, so some maps are positive), a real chest CR from the
    public corpus when present, and a PNG (no DICOM results for it)."""
    root = tmp_path_factory.mktemp("dsrc")
    yy, xx = np.mgrid[0:300, 0:240]
    write_dicom(root / "dx.dcm", ((xx * 7 + yy * 5) % 4096).astype(np.uint16))
    try:
        shutil.copy(corpus_file("RG1_UNCR.dcm"), root / "rg1.dcm")
    except pytest.skip.Exception:
        pass
    cv2.imwrite(str(root / "plain.png"), np.full((40, 40), 100, np.uint8))
    return root


@pytest.fixture(scope="module")
def run(bundle_dir, sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("dres")
    code = run_app(["infer", str(sources), "--model", str(bundle_dir), "--out", str(out / "res"),
                    "--dicom-out", str(out / "pacs"), "--all-heatmaps", "--quiet"])
    assert code == 0
    rows = [json.loads(x) for x in (out / "res" / "results.jsonl").read_text().splitlines()]
    return out, {Path(r["path"]).name: r for r in rows}


def _names(sources: Path) -> list[str]:
    return sorted(p.name for p in sources.glob("*.dcm"))


def test_objects_reference_the_source(run, sources):
    out, rows = run
    assert "dicom_out" not in rows["plain.png"]
    assert sorted(p.name for p in (out / "pacs").iterdir()) == sorted(
        f"{Path(n).stem}{suffix}" for n in _names(sources) for suffix in (".sr.dcm", ".overlay.dcm"))
    manifest = json.loads((out / "res" / "manifest.json").read_text())
    for name in _names(sources):
        source = pydicom.dcmread(sources / name, stop_before_pixels=True)
        row = rows[name]
        assert row["status"] == "ok"
        sr = pydicom.dcmread(row["dicom_out"]["sr"])
        sc = pydicom.dcmread(row["dicom_out"]["overlay"])
        for ds in (sr, sc):
            # patient and study copied (absent type 2 elements empty), a new series, the AI
            # device identified
            for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID",
                            "StudyDate", "AccessionNumber"):
                assert (ds.get(keyword) or None) == (source.get(keyword) or None), keyword
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
            assert ds.Manufacturer == "hamedge" and ds.ManufacturerModelName == "HAM resnet18"
            assert ds.DeviceSerialNumber == manifest["model_id"]
            assert ds.SoftwareVersions.startswith("hamedge ")
        assert sr.SOPClassUID == uid.ComprehensiveSRStorage
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.StudyInstanceUID == source.StudyInstanceUID
        series = evidence.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.SOPClassUID == uid.SecondaryCaptureImageStorage
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (sc.Rows, sc.Columns, sc.PhotometricInterpretation) == (source.Rows, source.Columns, "RGB")
        assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)


def test_sr_content_matches_the_results(run, sources):
    out, rows = run
    for name in _names(sources):
        row = rows[name]
        source = pydicom.dcmread(sources / name, stop_before_pixels=True)
        report = hd.sr.srread(row["dicom_out"]["sr"])
        groups = report.content.get_image_measurement_groups()
        scores = {g.finding_type.meaning: g for g in groups}
        assert set(scores) == {"anomaly", *row["probabilities"]}
        expected = {"anomaly": row["anomaly"], **row["probabilities"]}
        for finding, group in scores.items():
            (measurement,) = group.get_measurements()
            assert measurement.name.meaning == "Probability"
            assert measurement.value == pytest.approx(expected[finding], abs=1e-6)
            (evaluation,) = group.get_qualitative_evaluations()
            positive = finding in row["findings"] or (finding == "anomaly" and row["anomalous"])
            assert evaluation.value.meaning == ("Present" if positive else "Absent")
            referenced = group.source_images[0].referenced_sop_instance_uid
            assert referenced == source.SOPInstanceUID
        regions = report.content.get_planar_roi_measurement_groups()
        boxes = [(finding, box) for finding, found in row["boxes"].items() for box in found]
        assert len(regions) == len(boxes)
        for group, (finding, box) in zip(regions, boxes):
            assert group.finding_type.meaning == finding
            assert group.roi.graphic_type.value == "POLYLINE"
            x0, y0, x1, y1 = box["x"], box["y"], box["x"] + box["w"], box["y"] + box["h"]
            assert group.roi.value.tolist() == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
            image = group.roi.ContentSequence[0]  # the SCOORD's selected-from IMAGE item
            assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert any(row["boxes"] for row in rows.values() if "dicom_out" in row), "no region tested"


def test_uids_repeat_for_the_same_model_and_image(run, bundle_dir, sources, tmp_path, capsys):
    out, rows = run
    name = _names(sources)[0]
    assert run_app(["infer", str(sources / name), "--model", str(bundle_dir), "--out",
                    str(tmp_path / "r"), "--dicom-out", str(tmp_path / "p"), "--quiet"]) == 0
    again = json.loads((tmp_path / "r" / "results.jsonl").read_text().splitlines()[0])
    for kind in ("sr", "overlay"):
        first = pydicom.dcmread(rows[name]["dicom_out"][kind], stop_before_pixels=True)
        second = pydicom.dcmread(again["dicom_out"][kind], stop_before_pixels=True)
        assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (second.SOPInstanceUID,
                                                                   second.SeriesInstanceUID)
    (tmp_path / "file").write_text("x")
    assert run_app(["infer", str(sources / name), "--model", str(bundle_dir), "--out",
                    str(tmp_path / "r2"), "--dicom-out", str(tmp_path / "file")]) == 2
    assert "--dicom-out" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian: apt-get install dicom3tools)")
def test_dciodvfy_finds_no_error(run):
    out, _ = run
    for path in sorted((out / "pacs").iterdir()):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert not errors, (path.name, errors)


@pytest.mark.skipif(shutil.which("dsrdump") is None,
                    reason="dsrdump not installed (Debian: apt-get install dcmtk)")
def test_dcmtk_reads_the_report(run, sources):
    out, _ = run
    for path in sorted((out / "pacs").glob("*.sr.dcm")):
        # -v: dcmtk logs every violation of the SR IOD's content constraints it checks (value
        # types, relationships) as "W:" / "E:" lines on stderr; +Pt: the template it recognised
        result = subprocess.run(["dsrdump", "-v", "+Pt", str(path)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert not result.stderr.strip(), result.stderr
        assert "Imaging Measurement Report\")=CONTINUOUS>  # TID 1500 (DCMR)" in result.stdout
        assert "Probability" in result.stdout
