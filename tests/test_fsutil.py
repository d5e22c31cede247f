import os
import stat

import pytest

from hamedge.fsutil import atomic_write, sha256_file, write_text


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode & 0o044, oct(mode)  # readable by group/others like any file the user writes
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert len(sha256_file(target)) == 64


def test_write_text_is_utf8_and_keeps_surrogate_escaped_names(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # a non-UTF-8 file name as Python sees it
    target = tmp_path / "rows.csv"
    write_text(target, f"{name},é\n")
    assert target.read_bytes() == b"caf\xe9.png,\xc3\xa9\n"
