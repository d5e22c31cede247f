"""`hamedge export` end to end on a tiny model: the bundle, INT8, a torch-free reader, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hamedge.bundle import Bundle  # noqa: E402
from hamedge.cli import run_app  # noqa: E402
from hamedge.model.checkpoint import save_checkpoint  # noqa: E402
from hamedge.model.network import HAM  # noqa: E402
from hamedge.spec import ModelSpec  # noqa: E402
from hamedge.synth import SYNTH_CLASSES  # noqa: E402

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=SYNTH_CLASSES,
                 extra={"synth_size": 64})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    save_checkpoint(HAM(SPEC).eval(), SPEC, path)
    return path


@pytest.fixture(scope="module")
def int8_bundle(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "tiny.hamedge"
    code = run_app(["export", str(ckpt), "--out", str(out), "--int8", "--calib-count", "12",
                    "--val-count", "16", "--max-auc-drop", "1", "--max-tiou-drop", "1"])
    assert code == 0
    return out


@pytest.mark.slow
def test_int8_bundle_contents(int8_bundle, ckpt):
    from hamedge.fsutil import sha256_file

    b = Bundle.open(int8_bundle)
    assert set(b.files) == {"spec.json", "model.onnx", "model.int8.onnx", "model.int8.cpu.onnx",
                            "calibration.json", "weights.safetensors", "ood.json"}
    # the input gate's statistics: of the calibration images, threshold on the guard's images
    ood = json.loads((int8_bundle / "ood.json").read_text())
    assert ood["fit_images"] == 12 and ood["heldout_images"] >= 8 and ood["threshold"] > 0
    assert b.provenance["ood"]["threshold"] == pytest.approx(ood["threshold"], abs=1e-3)
    assert b.graph.input_channels == 1 and b.graph.heatmaps == "raw" and b.graph.opset == 17
    prov = b.provenance
    assert prov["checkpoint_sha256"] == sha256_file(ckpt)
    assert {"torch", "onnx", "onnxruntime"} <= set(prov["versions"]) and prov["created"]
    assert prov["parity"]["ok"] and prov["parity"]["max_prob_diff"] < 1e-4
    cal = b.calibration
    assert cal["checkpoint_sha256"] == prov["checkpoint_sha256"] and cal["method"] == "max"
    assert cal["count"] == 12 and len(cal["calibration_images"]["images"]) == 12
    assert all(len(i["sha256"]) == 64 for i in cal["calibration_images"]["images"])
    assert len(cal["tensor_ranges_sha256"]) == 64
    assert {t: v["file"] for t, v in cal["targets"].items()} == {
        "tensorrt": "model.int8.onnx", "cpu": "model.int8.cpu.onnx"}
    for target in ("tensorrt", "cpu"):
        acc = cal["accuracy"][target]
        assert set(acc["auc_delta"]) == set(SYNTH_CLASSES)
        assert "mean_tiou@0.3_delta" in acc and acc["heatmap_agreement"]["mean_iou"] is not None
        # every installed CPU backend that may run the graph is guarded on its own arithmetic
        assert set(acc["backends"]) == set(cal["guard_backends"]) >= {"onnxruntime"}
        for verdict in acc["backends"].values():
            assert verdict["passed"] and 0 <= verdict["max_prob_diff"] < 1
            assert "mean_auc_delta" in verdict and "mean_tiou@0.3_delta" in verdict
        assert b.guard_refusal("onnxruntime", "int8", acc["file"]) is None
    assert cal["bf16"]["measured"] or cal["bf16"]["reason"]
    assert b.path_for("int8", "tensorrt").name == "model.int8.onnx"
    assert oct(os.stat(int8_bundle).st_mode & 0o777) != "0o700"


@pytest.mark.slow
def test_bundle_runs_in_a_process_without_torch(int8_bundle):
    script = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None  # any import of torch now fails
        import numpy as np, onnxruntime as ort
        from hamedge.bundle import Bundle
        b = Bundle.open({str(int8_bundle)!r})
        x = np.zeros((2, b.graph.input_channels, b.graph.input_size, b.graph.input_size), np.float32)
        for p in ("fp32", "int8"):
            s = ort.InferenceSession(str(b.path_for(p, "cpu")), providers=["CPUExecutionProvider"])
            cls, ano, maps = s.run(list(b.graph.output_names), {{b.graph.input_name: x}})
            assert cls.shape == (2, b.spec.num_classes) and maps.shape[1] == b.spec.num_classes + 1
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_existing_output_is_refused_and_force_replaces(int8_bundle, ckpt, capsys, tmp_path):
    before = (int8_bundle / "checksums").read_text()
    assert run_app(["export", str(ckpt), "--out", str(int8_bundle)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "already exists" in err[-1]
    assert (int8_bundle / "checksums").read_text() == before
    out = tmp_path / "fp32.hamedge"
    assert run_app(["export", str(ckpt), "--out", str(out), "--full-res-heatmaps"]) == 0
    assert run_app(["export", str(ckpt), "--out", str(out), "--force"]) == 0
    b = Bundle.open(out)
    assert b.calibration is None and b.graph.heatmaps == "raw"


@pytest.mark.parametrize("case", ["corrupt", "not_hamedge", "empty_calib", "too_few", "missing"])
def test_bad_inputs_one_line_no_bundle(case, ckpt, tmp_path, capsys):
    args = ["export", str(ckpt), "--out", str(tmp_path / "out.hamedge")]
    if case == "corrupt":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(ckpt.read_bytes()[:5000])
        args[1] = str(bad)
    elif case == "not_hamedge":
        from safetensors.torch import save_file

        other = tmp_path / "other.safetensors"
        save_file({"fc.weight": torch.zeros(3, 3)}, str(other))
        args[1] = str(other)
    elif case == "empty_calib":
        (tmp_path / "empty").mkdir()
        args += ["--int8", "--calib", str(tmp_path / "empty")]
    elif case == "too_few":
        args += ["--int8", "--calib-count", "3"]
    else:
        args[1] = str(tmp_path / "nope.safetensors")
    code = run_app(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err and err[-1].startswith("error:") and "Traceback" not in "\n".join(err)
    assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".out*")) == []


def test_engine_request_without_tensorrt_still_writes_bundle(ckpt, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this checks the machine without it")
    except ImportError:
        pass
    out = tmp_path / "e.hamedge"
    assert run_app(["export", str(ckpt), "--out", str(out), "--engine"]) == 0
    err = capsys.readouterr().err
    assert "engine fp16: not built: TensorRT is not installed" in err
    assert Bundle.open(out).engines == []


def test_fused_plugin_graph_is_an_extra_tensorrt_only_graph(ckpt, tmp_path):
    pytest.importorskip("hamedge.kernels.onnx_plugin")
    import onnx

    out = tmp_path / "p.hamedge"
    assert run_app(["export", str(ckpt), "--out", str(out), "--fused-plugin"]) == 0
    b = Bundle.open(out)
    assert b.plugin_graph_path is not None and b.path_for("fp32").name == "model.onnx"
    m = onnx.load(str(b.plugin_graph_path))
    assert [n.domain for n in m.graph.node if n.op_type == "FusedRefine"] == ["hamedge"]
    assert b.provenance["plugin_graph"]["heatmaps"] == "refined"
    compat = b.provenance["tensorrt_compat"]  # the static parser check, per graph and version
    assert set(compat) == {"model.onnx", "model.plugin.onnx"}
    assert set(compat["model.onnx"]) == {"8.5", "10.3", "11"} and compat["model.onnx"]["10.3"]["ok"]
    assert not compat["model.plugin.onnx"]["8.5"]["ok"] and compat["model.plugin.onnx"]["11"]["ok"]
    assert not any(n.op_type == "FusedRefine" for n in onnx.load(str(b.path_for("fp32"))).graph.node)
