"""The input gate (hamedge.gate): frontal chest CR/DX radiographs pass; everything else is a
'refused' row with its reason, decided from the header before any pixel is decoded.

Files no one here wrote come from pydicom's test corpus (tests/dicom_corpus.py); the rule-by-rule
cases are DX/CR/SC datasets built with pydicom with the right SOP classes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import uid

import hamedge
from dicom_corpus import corpus_file
from hamedge.cli import run_app
from hamedge.errors import DataError, InputRefused
from hamedge.gate import ACCEPTED, OFF, REFUSED, UNTAGGED, GateSettings, check_file
from infer_helpers import make_bundle, write_dicom

PIXELS = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)


# --- files of the public corpus ---------------------------------------------------------------

@pytest.mark.parametrize("name, why", [
    ("CT_small.dcm", "CT Image Storage is not a CR or DX radiograph"),
    ("MR_small.dcm", "MR Image Storage is not a CR or DX radiograph"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR Image Storage"),
    ("ExplVR_BigEnd.dcm", "Ultrasound Image Storage"),
    ("rtstruct.dcm", "RT Structure Set Storage"),
    ("rtplan.dcm", "RT Plan Storage"),
    ("rtdose.dcm", "RT Dose Storage"),
    ("test-SR.dcm", "Comprehensive SR Storage"),
    ("reportsi.dcm", "Basic Text SR Storage"),
    ("liver_1frame.dcm", "Segmentation Storage"),
    ("waveform_ecg.dcm", "12-lead ECG Waveform Storage"),
    ("SC_rgb.dcm", "Secondary Capture Image Storage: accepted only with --accept-secondary-capture"),
    ("no_meta.dcm", "no SOP Class UID"),
    # pydicom-data (skipped when absent)
    ("RG3_UNCR.dcm", "Body Part Examined EXTREMITY, not CHEST"),  # a real radiograph of a limb
    ("US1_UNCR.dcm", "Ultrasound Image Storage"),
    ("emri_small.dcm", "Enhanced MR Image Storage"),
    ("OBXXXX1A_rle_2frame.dcm", "Ultrasound Multi-frame Image Storage"),
])
def test_public_corpus_non_chest_refused(name, why):
    verdict, _ = check_file(corpus_file(name))
    assert verdict.verdict == REFUSED and why in verdict.reason
    assert "\n" not in verdict.reason


def test_real_chest_cr_passes_and_records_its_tags():
    verdict, header = check_file(corpus_file("RG1_UNCR.dcm"))  # CR, CHEST, PA, MONOCHROME1
    assert verdict.verdict == ACCEPTED and verdict.reason == ""
    tags = verdict.to_dict()["tags"]
    assert tags["SOPClassUID"] == uid.ComputedRadiographyImageStorage
    assert tags["SOPClassName"] == "Computed Radiography Image Storage"
    assert (tags["Modality"], tags["BodyPartExamined"], tags["ViewPosition"]) == ("CR", "CHEST", "PA")
    assert "PixelData" not in header  # decided from the header alone


def test_secondary_capture_only_when_asked_and_other_rules_still_apply():
    sc_mono_nm = corpus_file("JPEG2000.dcm")  # grayscale Secondary Capture of a NM whole body
    asked = GateSettings(accept_secondary_capture=True)
    assert check_file(sc_mono_nm)[0].reason.endswith("--accept-secondary-capture")
    assert check_file(sc_mono_nm, asked)[0].reason == "Modality NM, not CR or DX"
    assert check_file(corpus_file("SC_rgb.dcm"), asked)[0].reason == "Modality OT, not CR or DX"


# --- every rule, on datasets built with the right SOP classes ---------------------------------

@pytest.mark.parametrize("sop, tags, settings, expected", [
    (uid.DigitalXRayImageStorageForPresentation, {}, GateSettings(), ""),
    (uid.DigitalXRayImageStorageForPresentation, {"ViewPosition": "AP"}, GateSettings(), ""),
    (uid.ComputedRadiographyImageStorage, {"Modality": "CR", "PresentationIntentType": None},
     GateSettings(), ""),
    # absent or empty optional elements do not refuse
    (uid.DigitalXRayImageStorageForPresentation, {"BodyPartExamined": None, "ViewPosition": ""},
     GateSettings(), ""),
    (uid.SecondaryCaptureImageStorage, {}, GateSettings(accept_secondary_capture=True), ""),
    (uid.SecondaryCaptureImageStorage, {}, GateSettings(),
     "Secondary Capture Image Storage: accepted only with --accept-secondary-capture"),
    (uid.DigitalXRayImageStorageForProcessing, {}, GateSettings(),
     "Digital X-Ray Image Storage - For Processing: raw detector data, not a processed radiograph"),
    (uid.DigitalMammographyXRayImageStorageForPresentation, {"Modality": "MG"}, GateSettings(),
     "Digital Mammography X-Ray Image Storage - For Presentation is not a CR or DX radiograph"),
    (uid.DigitalXRayImageStorageForPresentation, {"Modality": "CT"}, GateSettings(),
     "Modality CT, not CR or DX"),
    (uid.DigitalXRayImageStorageForPresentation, {"Modality": None}, GateSettings(),
     "Modality absent, not CR or DX"),
    (uid.DigitalXRayImageStorageForPresentation, {"PresentationIntentType": "FOR PROCESSING"},
     GateSettings(), "Presentation Intent FOR PROCESSING: raw detector data, not a processed radiograph"),
    (uid.DigitalXRayImageStorageForPresentation, {"PhotometricInterpretation": "RGB"},
     GateSettings(), "Photometric Interpretation RGB, not MONOCHROME1/2"),
    (uid.DigitalXRayImageStorageForPresentation, {"NumberOfFrames": 3}, GateSettings(),
     "multi-frame object (3 frames): a radiograph is one frame"),
    (uid.DigitalXRayImageStorageForPresentation, {"BodyPartExamined": "SKULL"}, GateSettings(),
     "Body Part Examined SKULL, not CHEST"),
    (uid.DigitalXRayImageStorageForPresentation, {"ViewPosition": "LL"}, GateSettings(),
     "View Position LL, not a frontal view (PA or AP)"),
    (uid.ComputedRadiographyImageStorage, {"Modality": "CR", "ViewPosition": "LATERAL"},
     GateSettings(), "View Position LATERAL, not a frontal view (PA or AP)"),
    # accept_any: every rule off, the tags still recorded
    (uid.CTImageStorage, {"Modality": "CT"}, GateSettings(accept_any=True), None),
])
def test_each_rule(tmp_path, sop, tags, settings, expected):
    path = write_dicom(tmp_path / "x.dcm", PIXELS, sop_class=sop, **tags)
    verdict, _ = check_file(path, settings)
    if expected is None:
        assert verdict.verdict == OFF and verdict.tags["Modality"] == "CT"
    elif expected == "":
        assert verdict.verdict == ACCEPTED, verdict.reason
    else:
        assert verdict.verdict == REFUSED and verdict.reason == expected


def test_untagged_files_and_unreadable_headers(tmp_path):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((8, 8), np.uint8))
    assert check_file(png)[0].verdict == UNTAGGED
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)  # opening it would block: the gate leaves it to the reader's error
    assert check_file(fifo)[0].verdict == UNTAGGED
    # garbage after the preamble: nothing identifies it, refused
    (tmp_path / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 7)
    assert check_file(tmp_path / "garbage.dcm")[0].reason.startswith("no SOP Class UID")
    # a header pydicom cannot parse (a sequence cut short): an error, not a verdict
    syntax = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0"
    cut_sequence = b"\x08\x00\x16\x00SQ\x00\x00\xff\xff\xff\xff\x01\x02"
    (tmp_path / "cut.dcm").write_bytes(b"\0" * 128 + b"DICM" + syntax + cut_sequence)
    with pytest.raises(DataError, match="not a readable DICOM header"):
        check_file(tmp_path / "cut.dcm")
    # a Deflated Explicit VR Little Endian data set whose deflate stream is corrupt
    import struct

    deflated = b"1.2.840.10008.1.2.1.99\0"
    element = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(deflated)) + deflated
    meta = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(element)) + element
    (tmp_path / "deflate.dcm").write_bytes(b"\0" * 128 + b"DICM" + meta + b"\x12\x34not zlib" * 4)
    with pytest.raises(DataError, match="not a readable DICOM header"):
        check_file(tmp_path / "deflate.dcm")


def test_a_malformed_sop_class_element_is_a_refusal_not_a_pydicom_exception(tmp_path):
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    from hamedge.gate import decide

    header = Dataset()
    header.Modality = "CR"
    # SOP Class UID stored with VR US and an odd length: pydicom raises on every access
    header[0x00080016] = RawDataElement(Tag(0x00080016), "US", 3, b"\x01\x02\x03", 0, False, True)
    verdict = decide(header)
    assert verdict.verdict == REFUSED and "SOP Class UID" in verdict.reason
    assert "SOPClassName" not in verdict.tags


# --- hamedge infer and hamedge.load apply it --------------------------------------------------

@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("gate") / "tiny.hamedge")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """A chest DX, a lateral whose pixel data is garbage (refused before decoding), a PNG, a
    broken file, and CT / MR / SR / SEG / RT / SC files of pydicom's corpus."""
    import shutil

    root = tmp_path_factory.mktemp("mixed")
    write_dicom(root / "chest_pa.dcm", PIXELS)
    path = write_dicom(root / "lateral.dcm", PIXELS, ViewPosition="LL")
    path.write_bytes(path.read_bytes()[:-4000])  # truncated pixels: never decoded
    cv2.imwrite(str(root / "photo.png"), np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)))
    write_dicom(root / "nopixels.dcm", None)
    for name in ("CT_small.dcm", "MR_small.dcm", "test-SR.dcm", "liver_1frame.dcm",
                 "rtstruct.dcm", "SC_rgb_jpeg_gdcm.dcm"):
        shutil.copy(corpus_file(name), root / name)
    return root


def _rows(out: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return {Path(r["path"]).name: r for r in lines}


def test_infer_refuses_with_reasons_and_counts(bundle_dir, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_app(["infer", str(mixed_folder), "--model", str(bundle_dir), "--out", str(out),
                    "--heatmaps", "none"])
    assert code == 1  # nopixels.dcm is an error; refusals alone do not fail a run
    rows = _rows(out)
    assert rows["chest_pa.dcm"]["status"] == "ok"
    assert rows["chest_pa.dcm"]["gate"]["verdict"] == "accepted"
    assert rows["chest_pa.dcm"]["gate"]["tags"]["ViewPosition"] == "PA"
    assert rows["photo.png"]["status"] == "ok" and rows["photo.png"]["gate"]["verdict"] == "untagged"
    assert rows["nopixels.dcm"]["status"] == "error"
    refused = {n: r for n, r in rows.items() if r["status"] == "refused"}
    assert set(refused) == {"lateral.dcm", "CT_small.dcm", "MR_small.dcm", "test-SR.dcm",
                            "liver_1frame.dcm", "rtstruct.dcm", "SC_rgb_jpeg_gdcm.dcm"}
    assert refused["lateral.dcm"]["reason"] == "View Position LL, not a frontal view (PA or AP)"
    assert refused["liver_1frame.dcm"]["reason"] == "Segmentation Storage is not a CR or DX radiograph"
    for row in refused.values():
        assert row["gate"]["verdict"] == "refused" and "anomaly" not in row
        assert row["gate"]["tags"]["SOPClassUID"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gate"]["enabled"] is True and manifest["gate"]["dicom"]["modalities"] == ["CR", "DX"]
    summary = capsys.readouterr().err
    assert "2 ok, 7 refused, 1 failed" in summary and "refused by the input gate" in summary
    csv_text = (out / "results.csv").read_text()
    assert csv_text.count(",refused,") == 7

    # other gate settings into the same folder: refused, not mixed into these results
    assert run_app(["infer", str(mixed_folder), "--model", str(bundle_dir), "--out", str(out),
                    "--accept-any", "--quiet"]) == 2
    assert "gate differs" in capsys.readouterr().err


def test_accept_any_runs_everything_and_records_it(bundle_dir, mixed_folder, tmp_path, capsys):
    out = tmp_path / "any"
    run_app(["infer", str(mixed_folder / "CT_small.dcm"), str(mixed_folder / "MR_small.dcm"),
             "--model", str(bundle_dir), "--out", str(out), "--accept-any", "--quiet"])
    rows = _rows(out)
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["CT_small.dcm"]["gate"] == {"verdict": "off"}
    assert json.loads((out / "manifest.json").read_text())["gate"]["enabled"] is False
    capsys.readouterr()


def test_api_applies_the_same_gate(bundle_dir, mixed_folder):
    with hamedge.load(bundle_dir, backend="onnxruntime") as model:
        assert model.predict(mixed_folder / "chest_pa.dcm").image_size == (64, 64)
        with pytest.raises(InputRefused) as info:
            model.predict(mixed_folder / "CT_small.dcm")
        message = str(info.value)
        assert "\n" not in message and "CT Image Storage is not a CR or DX radiograph" in message
        with pytest.raises(InputRefused, match="View Position LL"):
            model.predict([mixed_folder / "chest_pa.dcm", mixed_folder / "lateral.dcm"])
    with hamedge.load(bundle_dir, backend="onnxruntime", accept_any=True) as model:
        assert model.predict(mixed_folder / "CT_small.dcm").image_size == (128, 128)


def test_a_blank_image_is_refused_by_infer_and_the_api(bundle_dir, tmp_path):
    folder = tmp_path / "blank"
    folder.mkdir()
    cv2.imwrite(str(folder / "black.png"), np.zeros((48, 48), np.uint8))
    cv2.imwrite(str(folder / "ramp.png"), np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1)))
    write_dicom(folder / "blank_pa.dcm", np.full((64, 64), 700, np.uint16))  # tags pass, pixels do not
    out = tmp_path / "out"
    assert run_app(["infer", str(folder), "--model", str(bundle_dir), "--out", str(out),
                    "--heatmaps", "none", "--quiet"]) == 0
    rows = _rows(out)
    assert rows["ramp.png"]["status"] == "ok"
    for name in ("black.png", "blank_pa.dcm"):
        assert rows[name]["status"] == "refused" and rows[name]["reason"].startswith("blank image")
        assert rows[name]["gate"]["verdict"] == REFUSED
    with hamedge.load(bundle_dir, backend="onnxruntime") as model:
        with pytest.raises(InputRefused, match="blank image"):
            model.predict(np.full((40, 40), 0.5, np.float32))
        with pytest.raises(InputRefused, match="blank image"):
            model.predict(folder / "black.png")
    with hamedge.load(bundle_dir, backend="onnxruntime", accept_any=True) as model:
        assert model.predict(folder / "black.png").image_size == (48, 48)
