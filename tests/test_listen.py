"""hamedge listen: pynetdicom's storescu pushes real DICOM files (pydicom's test corpus and a DX
written here) over loopback; each instance lands in the results store as `hamedge infer` writes
it; a calling AE title not configured is refused; logs carry no patient data."""

from __future__ import annotations

import csv
import json
import logging
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from infer_helpers import write_dicom
from serve_helpers import free_ports

pytest.importorskip("pynetdicom", reason="pynetdicom not installed (pip install 'hamedge[serve]')")


def _corpus() -> list[Path]:
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    files = [folder / name for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm")]
    assert all(f.is_file() for f in files)
    return files


def _storescu(port: int, calling: str, files: list[Path], *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port),
                           *map(str, files), "-aet", calling, "-aec", "HAMEDGE", "-v", *extra],
                          capture_output=True, text=True, timeout=60)


def _wait(listener, count: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while sum(listener.counts[k] for k in ("ok", "failed", "refused")) < count:
        assert time.monotonic() < deadline, listener.counts
        time.sleep(0.1)


def test_pushed_instances_are_run_like_infer(tiny_bundle, tmp_path, caplog):
    from hamedge.gate import GateSettings
    from hamedge.pipeline import InferOptions, run_inference
    from hamedge.runtime import open_backend
    from hamedge.serve.listener import Listener

    dx = tmp_path / "dx.dcm"
    write_dicom(dx, (np.arange(256 * 200).reshape(256, 200) % 4096).astype(np.uint16))
    files = [*_corpus(), dx]
    (port,) = free_ports(1)
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="hamedge.listen")
    with open_backend(tiny_bundle, "onnxruntime", threads=1) as backend:
        options = InferOptions(batch=4, heatmaps="png",
                               gate=GateSettings(accept_secondary_capture=True))
        with Listener(backend, out, port=port, calling_ae_titles=("SCANNER",), options=options,
                      model_key="k") as listener:
            # storescu proposes uncompressed syntaxes unless told to propose the files' own
            # (-cx): the RLE-compressed secondary capture goes in its own association
            for group, extra in ((files[:2] + files[3:], ()), (files[2:3], ("-cx",))):
                sent = _storescu(port, "SCANNER", group, *extra)
                assert sent.returncode == 0 and sent.stderr.count("0x0000 - Success") == len(group), \
                    sent.stdout + sent.stderr
            _wait(listener, len(files))
            refused = _storescu(port, "INTRUDER", files[:1])
            assert "rejected" in (refused.stdout + refused.stderr).lower()
            assert listener.counts["rejected"] == 1 and listener.counts["received"] == len(files)
        local = tmp_path / "local"
        run_inference(files, backend, local, options, "k")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    rows = {r["path"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert len(rows) == len(files)
    statuses = sorted(r["status"] for r in rows.values())
    assert statuses == ["ok", "refused", "refused", "refused"], statuses  # CT, MR, RGB capture
    want = [json.loads(line) for line in (local / "results.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items()  # noqa: E731
                       if k not in ("path", "heatmaps", "dicom")}
    assert sorted(map(json.dumps, map(strip, got))) == sorted(map(json.dumps, map(strip, want)))
    import pydicom

    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert sorted(Path(p).stem for p in rows) == sorted(uids)  # named by instance, in received/
    logged = caplog.text
    assert "accepted" in logged and "rejected" in logged
    assert "Test^Patient" not in logged and not any(uid in logged for uid in uids)


def test_listen_needs_allowed_titles(tiny_bundle, tmp_path):
    from hamedge.errors import HamedgeError
    from hamedge.serve.listener import Listener

    with pytest.raises(HamedgeError, match="calling AE titles"):
        Listener(None, tmp_path, calling_ae_titles=())
    with pytest.raises(HamedgeError, match="AE title"):
        Listener(None, tmp_path, calling_ae_titles=("A" * 17,))
