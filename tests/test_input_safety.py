"""Nothing can hang, blow up or lie: each case a fuzzer found, reproduced; and a small seeded
mutation fuzzer of our own over real PNG/DICOM files."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid

import dicom_encodings
from hamedge.errors import BundleError, DataError
from hamedge.io import find_images, is_dicom, read_image, read_image_with_notes

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _in_thread(fn, timeout: float = 20.0):
    """fn() in a daemon thread; fails the test when it does not finish in time (a hang)."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"hung for more than {timeout} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


# -- only regular files are opened ---------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_an_input_folder_never_blocks(tmp_path):
    Image.new("L", (40, 40), 9).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "scan0001")  # no suffix: is_dicom would have opened it
    os.mkfifo(tmp_path / "trap.png")
    found, skipped = _in_thread(lambda: find_images(tmp_path))
    assert [p.name for p in found] == ["ok.png"] and skipped["not_a_file"] == 2
    assert _in_thread(lambda: is_dicom(tmp_path / "scan0001")) is False
    with pytest.raises(DataError, match="not a regular file"):
        _in_thread(lambda: read_image(tmp_path / "trap.png"))


# -- one pixel limit, checked before decoding ------------------------------------------------------

def _png(width: int, height: int, depth: int, colour: int, payload: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([depth, colour, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", payload) + chunk(b"IEND", b"")


@pytest.mark.parametrize("colour", [0, 2])  # 16-bit gray (Pillow) and 16-bit RGB (OpenCV)
def test_a_16bit_png_bomb_is_refused_from_its_header(tmp_path, colour):
    # 20000 x 20000 x 16 bit: rows of zeros compress to almost nothing (a zlib bomb)
    stream = zlib.compressobj(9)
    row = b"\0" * (1 + 20000 * 2 * (3 if colour == 2 else 1))
    payload = b"".join(stream.compress(row) for _ in range(200)) + stream.flush()
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(20000, 20000, 16, colour, payload))
    with pytest.raises(DataError, match="safety limit"):
        _in_thread(lambda: read_image(path))


def test_jpeg_and_tiff_headers_are_checked_against_the_same_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("hamedge.io.MAX_PIXELS", 1000)
    Image.new("L", (40, 40)).save(tmp_path / "a.jpg")
    Image.new("F", (40, 40)).save(tmp_path / "a.tif")
    for name in ("a.jpg", "a.tif"):
        with pytest.raises(DataError, match="safety limit"):
            read_image(tmp_path / name)


def test_dicom_rows_columns_are_checked_before_decoding(tmp_path):
    ds = dicom_encodings.dx_dataset(np.zeros((4, 4), np.uint16), 12)
    ds.Rows = ds.Columns = 65535
    ds.file_meta.TransferSyntaxUID = uid.RLELossless
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="safety limit"):
        _in_thread(lambda: read_image(tmp_path / "huge.dcm"))


def test_only_the_first_frame_is_decoded_and_frames_count_in_the_limit(tmp_path, monkeypatch):
    frames = np.stack([np.full((32, 32), v, np.uint16) for v in (100, 2000, 4000)])
    frames[0, :16] = 0
    ds = dicom_encodings.dx_dataset(frames[0], 12)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.compress(uid.RLELossless)
    ds.save_as(tmp_path / "multi.dcm", enforce_file_format=True)
    from pydicom.pixels.decoders.base import DecodeRunner

    decoded = []
    real = DecodeRunner.decode

    def spy(self, index):
        decoded.append(index)
        return real(self, index)

    monkeypatch.setattr(DecodeRunner, "decode", spy)
    image = read_image(tmp_path / "multi.dcm")
    assert decoded == [0]
    assert image.shape == (32, 32) and image[0, 0] == 0 and image[-1, -1] == 1
    monkeypatch.setattr("hamedge.io.MAX_DICOM_BYTES", 32 * 32 * 2 * 2)
    with pytest.raises(DataError, match="3 frame"):
        read_image(tmp_path / "multi.dcm")


# -- non-finite pixels and results ------------------------------------------------------------------

def test_non_finite_tiff_is_an_error(tmp_path):
    for value in (np.nan, np.inf):
        data = np.ones((20, 20), np.float32)
        data[3, 4] = value
        Image.fromarray(data, mode="F").save(tmp_path / "f.tif")
        with pytest.raises(DataError, match="non-finite"):
            read_image(tmp_path / "f.tif")


@pytest.mark.parametrize("slope", ["NaN", "inf", "1e308", "0"])
def test_absurd_rescale_slope_is_an_error(tmp_path, slope):
    ds = dicom_encodings.dx_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8) * 60, 12)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = slope
    ds.save_as(tmp_path / "s.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="RescaleSlope"):
        read_image_with_notes(tmp_path / "s.dcm")


def test_dicom_float_pixel_data_with_nan_is_an_error(tmp_path):
    ds = dicom_encodings.dx_dataset(np.zeros((8, 8), np.uint16), 12)
    del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.BitsAllocated = 32
    data = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    data[2, 2] = np.nan
    ds.FloatPixelData = data.tobytes()
    ds.save_as(tmp_path / "float.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="non-finite"):
        read_image(tmp_path / "float.dcm")


def _strict_json(line: str):
    return json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def test_the_results_writers_never_emit_invalid_json(tmp_path):
    from hamedge.pipeline.store import ResultsStore, json_line, safe_record

    bad = {"path": "/n.png", "status": "ok", "reason": "", "anomaly": float("nan"), "width": 4,
           "height": 4, "probabilities": {"A": float("inf")}, "findings": []}
    assert safe_record(bad)["status"] == "error" and "non-finite" in safe_record(bad)["reason"]
    _strict_json(json_line(bad))
    manifest = {"model_id": "m", "classes": ["A"], "precision": "fp32"}
    with ResultsStore(tmp_path, manifest, ["A"]) as store:
        store.append([dict(bad)])
    for line in (tmp_path / "results.jsonl").read_text().splitlines():
        assert _strict_json(line)["status"] == "error"
    # a bare NaN written by an older version is a damaged line: dropped, its image run again
    with open(tmp_path / "results.jsonl", "a") as handle:
        handle.write('{"path": "/m.png", "status": "ok", "anomaly": NaN}\n')
    with open(tmp_path / "results.csv", "a") as handle:
        handle.write("/m.png,ok,,0.5,0.5,,1,1\n")
    with ResultsStore(tmp_path, manifest, ["A"]) as store:
        assert set(store.done) == {"/n.png"}


def test_a_csv_row_cut_inside_but_ending_in_a_newline_is_run_again(tmp_path):
    from hamedge.pipeline.store import ResultsStore

    manifest = {"model_id": "m", "classes": ["A"], "precision": "fp32"}
    ok = {"path": "/a.png", "status": "ok", "reason": "", "anomaly": 0.5, "width": 4, "height": 4,
          "probabilities": {"A": 0.5}, "findings": []}
    with ResultsStore(tmp_path, manifest, ["A"]) as store:
        store.append([ok, dict(ok, path="/b.png")])
    text = (tmp_path / "results.csv").read_text().splitlines()
    text[-1] = text[-1][: len(text[-1]) // 2]  # cut inside the row, newline kept
    (tmp_path / "results.csv").write_text("\n".join(text) + "\n")
    with ResultsStore(tmp_path, manifest, ["A"]) as store:
        assert set(store.done) == {"/a.png"}
    with open(tmp_path / "results.csv", newline="") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == ["/a.png"]


# -- library warnings never reach the terminal --------------------------------------------------------

def test_warnings_go_to_the_row_of_the_file_that_raised_them_across_threads(tmp_path, capfd, recwarn):
    padded = TEST_FILES / "MR_small_padded.dcm"  # pydicom warns about its excess padding
    clean = TEST_FILES / "MR_small.dcm"
    jobs = [padded, clean] * 12
    results: list = [None] * len(jobs)

    def work(i):
        results[i] = read_image_with_notes(jobs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for path, (image, notes) in zip(jobs, results):
        if path == padded:
            assert any("padding" in n for n in notes)
        else:
            assert notes == []
    assert not [w for w in recwarn if "pydicom" in str(w.filename)]
    assert capfd.readouterr().err == ""


# -- bundles: absurd specs and links out ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from infer_helpers import make_bundle

    return make_bundle(tmp_path_factory.mktemp("safety") / "tiny.hamedge")


def _mutated(bundle: Path, tmp_path: Path, mutate) -> Path:
    from hamedge.bundle import format_checksums, parse_checksums
    from hamedge.fsutil import sha256_file

    copy = tmp_path / "b.hamedge"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "spec.json").read_text())
    meta = mutate(meta)
    if meta is not None:
        (copy / "spec.json").write_text(json.dumps(meta))
        sums = parse_checksums((copy / "checksums").read_text())
        sums["spec.json"] = sha256_file(copy / "spec.json")
        (copy / "checksums").write_text(format_checksums(sums))
    return copy


def _set(section, key, value):
    def mutate(meta):
        meta[section][key] = value
        return meta
    return mutate


@pytest.mark.parametrize("mutate,field", [
    (_set("spec", "input_size", 0), "input_size"),
    (_set("spec", "input_size", 1e9), "input_size"),
    (_set("spec", "input_size", 128.5), "input_size"),
    (_set("spec", "cam_gain", 0), "cam_gain"),
    (_set("spec", "anomaly_threshold", "high"), "anomaly_threshold"),
    (_set("spec", "class_thresholds", [-0.5] * 14), "class_thresholds"),
    (_set("spec", "mean", [float("nan")] * 3), "mean"),
    (_set("spec", "std", [1e-300] * 3), "std"),
    (lambda m: {**m, "spec": {**m["spec"], "class_names": m["spec"]["class_names"][:13],
                              "class_thresholds": None}}, "class"),
    (lambda m: {**m, "graph": [1, 2]}, "graph"),
    (lambda m: {**m, "spec": []}, "spec"),
])
def test_absurd_bundle_specs_are_refused_once_naming_the_field(tiny_bundle, tmp_path, mutate, field):
    from hamedge.bundle import Bundle

    bad = _mutated(tiny_bundle, tmp_path, mutate)
    with pytest.raises(BundleError) as info:
        Bundle.open(bad)
    assert field in str(info.value) and "\n" not in str(info.value)


def test_a_binary_checksums_file_is_refused(tiny_bundle, tmp_path):
    from hamedge.bundle import Bundle

    bad = _mutated(tiny_bundle, tmp_path, lambda m: None)
    (bad / "checksums").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BundleError, match="checksums"):
        Bundle.open(bad)


def test_bundle_links_leading_outside_are_refused(tiny_bundle, tmp_path):
    from hamedge.bundle import Bundle

    bad = _mutated(tiny_bundle, tmp_path, lambda m: None)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(bad / "weights.safetensors", outside / "weights.safetensors")
    os.symlink(outside / "weights.safetensors", bad / "weights.safetensors")  # same bytes
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.open(bad)
    os.unlink(bad / "weights.safetensors")
    shutil.move(outside / "weights.safetensors", bad / "weights.safetensors")
    Bundle.open(bad)  # whole again
    shutil.rmtree(bad / "engines", ignore_errors=True)
    os.symlink(outside, bad / "engines")
    with pytest.raises(BundleError, match="engines"):
        Bundle.open(bad)


# -- infer: its own outputs are never inputs; options checked first -----------------------------------

def _xrays(folder: Path, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (80, 80), dtype=np.uint8)).save(folder / f"x{i}.png")


def test_the_results_folder_is_never_read_as_input(tiny_bundle, tmp_path):
    from hamedge.cli import run_app

    src = tmp_path / "in"
    _xrays(src)
    for out in (src / "out", src):  # results below the input folder, and in it
        args = ["infer", str(src), "--model", str(tiny_bundle), "--out", str(out),
                "--all-heatmaps", "--quiet"]
        assert run_app(args) == 0
        assert run_app(args) == 0  # the second run finds its own heatmaps: still 3 inputs
        rows = (out / "results.jsonl").read_text().splitlines()
        assert sorted(os.path.basename(json.loads(r)["path"]) for r in rows) == ["x0.png", "x1.png", "x2.png"]


@pytest.mark.parametrize("extra,words", [
    (["--out", "/proc/hamedge-x"], "--out"),
    (["--batch", "0"], "--batch"),
    (["--batch", "100000"], "--batch"),
    (["--workers", "0"], "--workers"),
    (["--device", "gpu9"], "--device"),
    (["--precision", "int4"], "--precision"),
    (["--backend", "magic"], "--backend"),
])
def test_infer_options_are_checked_before_any_work(tmp_path, capsys, extra, words):
    from hamedge.cli import run_app

    _xrays(tmp_path / "in", 1)
    # a missing --model would fail too: the option error must come first
    args = ["infer", str(tmp_path / "in"), "--model", str(tmp_path / "none.hamedge"), "--quiet",
            "--out", str(tmp_path / "o"), *extra]
    assert run_app(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err


# -- a small mutation fuzzer ---------------------------------------------------------------------------

def _seeds(folder: Path) -> list[Path]:
    """Real files to mutate: a real NIH X-ray when present (else a synthetic one) as PNG 8/16
    bit, JPEG, TIFF, and DICOM in several syntaxes; plus pydicom's own files of other writers."""
    nih = ROOT.parent / "shared" / "data" / "nih-samples" / "images" / "00000001_000.png"
    if nih.is_file():
        img = np.asarray(Image.open(nih).convert("L").resize((96, 96)))
    else:
        img = (np.add.outer(np.arange(96), np.arange(96)) % 256).astype(np.uint8)
    folder.mkdir()
    Image.fromarray(img).save(folder / "a.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(folder / "b16.png")
    Image.fromarray(img).save(folder / "c.jpg", quality=90)
    Image.fromarray(img).save(folder / "d.tif")
    seeds = [folder / n for n in ("a.png", "b16.png", "c.jpg", "d.tif")]
    p12 = img.astype(np.uint16) * 16
    for name in ("explicit_le", "rle", "jpeg_lossless", "jpegls_lossless", "j2k_lossless"):
        seeds.append(dicom_encodings.write(p12, 12, name, folder / f"{name}.dcm"))
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "JPGExtended.dcm", "SC_rgb_rle.dcm"):
        shutil.copy(TEST_FILES / name, folder / name)
        seeds.append(folder / name)
    return seeds


_DICOM_FIELDS = {"Rows": [0, 1, 65535, 3], "Columns": [0, 65535, 7], "BitsAllocated": [0, 1, 12, 64],
                 "BitsStored": [0, 16, 40], "SamplesPerPixel": [0, 3, 9], "NumberOfFrames": ["0", "1000000", "65535"],
                 "RescaleSlope": ["NaN", "1e308", "-inf", "0"], "WindowWidth": ["0", "NaN", "-5"],
                 "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL", ""],
                 "PixelRepresentation": [1, 7]}


def _mutations(seeds: list[Path], out: Path, seed: int, count: int) -> list[Path]:
    rng = random.Random(seed)
    made = []
    for i in range(count):
        src = rng.choice(seeds)
        data = bytearray(src.read_bytes())
        kind = rng.choice(["truncate", "flip", "header"])
        if kind == "truncate":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
        elif src.suffix == ".png":
            width, height = rng.choice([(0, 5), (1, 1 << 31), (65535, 65535), (3, 3)])
            data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
            if rng.random() < 0.5:
                data[24:26] = bytes([rng.choice([1, 2, 4, 8, 16, 32]), rng.choice([0, 2, 3, 4, 6, 7])])
        elif src.suffix == ".dcm":
            ds = pydicom.dcmread(src, force=True)
            key = rng.choice(sorted(_DICOM_FIELDS))
            path = out / f"m{i:04d}.dcm"
            try:
                setattr(ds, key, rng.choice(_DICOM_FIELDS[key]))
                ds.save_as(path)
            except Exception:  # noqa: BLE001 - pydicom refused to write this mutation
                continue
            made.append(path)
            continue
        else:
            data = data[: len(data) // 2] + bytes(rng.randrange(256) for _ in range(64))
        path = out / f"m{i:04d}{src.suffix}"
        path.write_bytes(bytes(data))
        made.append(path)
    return made


def test_mutation_fuzzer_every_case_is_finite_ok_or_an_error(tmp_path, capfd, recwarn):
    from hamedge.preprocess import preprocess
    from hamedge.spec import ModelSpec

    spec = ModelSpec(input_size=64)
    seeds = _seeds(tmp_path / "seeds")
    cases = tmp_path / "cases"
    cases.mkdir()
    paths = _mutations(seeds, cases, seed=20261204, count=160)
    recwarn.clear()  # writing the mutations warns (test code); reading them must not
    outcomes = {"ok": 0, "error": 0}
    for path in paths:
        def one(path=path):
            try:
                image, _ = read_image_with_notes(path)
            except DataError as exc:
                assert "\n" not in str(exc)
                return "error"
            tensor = preprocess(image, spec, 1)
            assert np.isfinite(tensor).all(), path
            return "ok"

        outcomes[_in_thread(one, timeout=20)] += 1
    assert outcomes["ok"] > 10 and outcomes["error"] > 10, outcomes
    assert not [str(w.message) for w in recwarn if "Swig" not in str(w.message)]
    # C libraries (OpenJPEG, GDCM) may print on fd 2 here; `hamedge infer` routes that to its
    # --verbose log, checked end to end below
    capfd.readouterr()


@pytest.mark.slow
def test_fuzzed_folder_through_hamedge_infer_gives_rows_and_a_clean_terminal(tiny_bundle, tmp_path):
    seeds = _seeds(tmp_path / "seeds")
    cases = tmp_path / "cases"
    cases.mkdir()
    paths = _mutations(seeds, cases, seed=7, count=60)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hamedge.cli", "infer", str(cases), "--model", str(tiny_bundle),
           "--out", str(out), "--heatmaps", "none"]
    code = "import sys; from hamedge.cli import main; sys.argv = ['hamedge'] + sys.argv[1:]; main()"
    run = subprocess.run([sys.executable, "-c", code, *cmd[3:]], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode in (0, 1), run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("backend:")]
    assert len(lines) == 1 and "input(s)" in lines[0], run.stderr  # only the summary
    rows = [_strict_json(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(paths)
    for row in rows:
        assert row["status"] in ("ok", "error", "refused")
        if row["status"] == "ok":
            assert all(math.isfinite(v) for v in row["probabilities"].values())


def test_what_c_libraries_print_goes_to_the_verbose_log_not_the_terminal():
    code = """
import os, sys
from hamedge.cli.infer_cmds import _verbose_log, native_stderr_to_log
with _verbose_log(sys.argv[1] == "1"), native_stderr_to_log():
    os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\\n")
    print("summary line", file=sys.stderr)
"""
    for verbose in ("0", "1"):
        run = subprocess.run([sys.executable, "-c", code, verbose], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        lines = run.stderr.splitlines()
        assert "summary line" in lines
        raw = [line for line in lines if line.startswith("libpng")]
        assert not raw, run.stderr
        logged = [line for line in lines if "library: libpng warning" in line]
        assert len(logged) == (1 if verbose == "1" else 0), run.stderr
