"""`hamedge synth`: one summary line, one-line errors, deterministic output."""

from __future__ import annotations

import json

from hamedge.cli import run_app


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "set"
    assert run_app(["synth", "--out", str(out), "--count", "12", "--seed", "3", "--size", "64", "--workers", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "wrote 12 images" in line and "images/s" in line
    info = json.loads((out / "dataset.json").read_text())
    assert info["seed"] == 3 and info["count"] == 12 and info["size"] == 64
    first = (out / "images" / "synth_000000.png").read_bytes()

    assert run_app(["synth", "--out", str(out), "--count", "12", "--seed", "3", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and "Traceback" not in err

    assert run_app(["synth", "--out", str(out), "--count", "12", "--seed", "3", "--size", "64",
                    "--overwrite"]) == 0
    assert (out / "images" / "synth_000000.png").read_bytes() == first
    assert run_app(["synth", "--out", str(tmp_path / "x"), "--count", "5", "--size", "16"]) == 2
    assert "at least 32" in capsys.readouterr().err
