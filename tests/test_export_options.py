"""Every `hamedge export` option is checked before any work starts: one line naming the option,
no model loaded, no graph traced, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hamedge.cli import run_app
from hamedge.export import ExportOptionError, ExportOptions


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the export gets as far as loading the checkpoint."""
    try:
        import hamedge.model.checkpoint as ck
    except ImportError:  # no torch: no export could start anyway
        return

    def forbidden(*_a, **_k):
        raise AssertionError("the export started before its options were checked")

    monkeypatch.setattr(ck, "resolve_checkpoint", forbidden)
    monkeypatch.setattr(ck, "load_model", forbidden)


BAD = [
    (["--opset", "99999"], "--opset must be an integer between 11 and 20"),
    (["--opset", "9"], "--opset"),
    (["--int8", "--max-auc-drop", "-1"], "--max-auc-drop must be a number between 0 and 1"),
    (["--max-auc-drop", "nan"], "--max-auc-drop"),
    (["--max-tiou-drop", "2"], "--max-tiou-drop"),
    (["--int8", "--calib-count", "-1"], "--calib-count must be an integer at least 8"),
    (["--calib-seed", "-3"], "--calib-seed"),
    (["--val-count", "0"], "--val-count"),
    (["--method", "median"], "--method must be one of max, entropy, percentile"),
    (["--engine", "--engine-precision", "int4"], "--engine-precision must be among"),
    (["--min-batch", "4", "--opt-batch", "2"], "batch profile needs"),
    (["--min-batch", "0"], "--min-batch"),
    (["--workspace-mib", "0"], "--workspace-mib"),
    (["--dla-core", "-1"], "--dla-core"),
    (["--int8", "--calib", "{tmp}/missing"], "--calib {tmp}/missing does not exist"),
    (["--int8", "--val", "{tmp}/file.txt"], "is not a folder"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_option_is_one_line_before_any_work(extra, message, tmp_path, capsys, no_work):
    (tmp_path / "file.txt").write_text("x")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code = run_app(["export", "--out", str(tmp_path / "b.hamedge"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message.replace("{tmp}", str(tmp_path)) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing written


@pytest.mark.parametrize("out,why", [("/proc/hamedge-x", "cannot write in /proc"),
                                     ("{tmp}/file.txt/b", "is not a folder"),
                                     ("{tmp}/file.txt", "is not a folder"),
                                     ("{tmp}", "already exists (use --force")])
def test_unwritable_out_is_refused_first(out, why, tmp_path, capsys, no_work):
    (tmp_path / "file.txt").write_text("x")
    out = out.replace("{tmp}", str(tmp_path))
    assert run_app(["export", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0], err


def test_defaults_are_valid_and_engine_precisions_follow_int8(tmp_path):
    ExportOptions(out=tmp_path / "b").validate()
    assert ExportOptions(out=tmp_path / "b").engines_to_build() == ("fp16",)
    assert ExportOptions(out=tmp_path / "b", int8=True).engines_to_build() == ("fp16", "int8")
    assert ExportOptions(out=tmp_path / "b", engine_precisions=("fp32",)).engines_to_build() == (
        "fp32",)
    with pytest.raises(ExportOptionError, match="--fold must be true or false"):
        ExportOptions(out=tmp_path / "b", fold="yes").validate()
    with pytest.raises(ExportOptionError, match="--opset"):
        ExportOptions(out=tmp_path / "b", opset=17.0).validate()


def test_options_and_cli_import_without_torch():
    code = ("import sys\nimport hamedge.cli, hamedge.export\n"
            "from hamedge.export import ExportOptions\n"
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
