"""The data layers (io, preprocess, datasets, synth) must work without torch (slim runtime)."""

from __future__ import annotations

import subprocess
import sys


def test_data_layers_do_not_import_torch():
    code = ("import sys, numpy as np\n"
            "import hamedge.io, hamedge.preprocess, hamedge.datasets, hamedge.synth\n"
            "from hamedge.spec import ModelSpec\n"
            "img, labels, boxes = hamedge.synth.render(0, 0, 64)\n"
            "hamedge.preprocess.preprocess(img, ModelSpec(input_size=32))\n"
            "bad = [m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
