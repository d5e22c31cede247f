"""The CLI's last line of defence: an unexpected exception is one line and exit 2, not a traceback."""

import subprocess
import sys


def test_unexpected_error_is_one_line(tmp_path):
    blocker = tmp_path / "file.png"
    blocker.write_bytes(b"x")
    # --out under a regular file: the OS refuses to make the folder (NotADirectoryError).
    proc = subprocess.run([sys.executable, "-c", "from hamedge.cli import main; main()", "synth",
                           "--out", str(blocker / "sub"), "--count", "2", "--seed", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
