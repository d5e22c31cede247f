"""TensorRT engine building without TensorRT: names, profiles, compatibility, and the builder's
API handling (10.x flags vs 11.x strongly typed) checked against fake tensorrt modules."""

from __future__ import annotations

import pytest

from hamedge.bundle import Bundle, BundleWriter, EngineRecord, GraphInfo
from hamedge.errors import BackendUnavailable, BundleError, HamedgeError
from hamedge.trt.engines import GpuInfo
from hamedge.spec import ModelSpec
from hamedge.trt.build import build_engine, features, network_flags
from hamedge.trt.engines import BatchProfile, check_engine_compatible, engine_filename, slug
from trt_fakes import fake_tensorrt

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))
ORIN = GpuInfo("Orin", "8.7")


def test_names_and_profiles():
    assert slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    name = engine_filename("NVIDIA H100 80GB HBM3", "10.3.0", "int8", BatchProfile(1, 4, 16))
    assert name == "nvidia-h100-80gb-hbm3_trt10.3.0_int8_b1-4-16.plan"
    assert engine_filename("Orin", "8.5.2", "fp16", BatchProfile(), dla_core=0).endswith("_dla0.plan")
    assert BatchProfile(2, 4, 8).shapes(1, 64) == ((2, 1, 64, 64), (4, 1, 64, 64), (8, 1, 64, 64))
    with pytest.raises(HamedgeError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)


def record(**kw):
    base = dict(plan="orin_trt10.3.0_fp16_b1-4-8.plan", gpu_name="Orin", compute_capability="8.7",
                trt_version="10.3.0", precision="fp16", min_batch=1, opt_batch=4, max_batch=8,
                onnx_file="model.onnx", onnx_sha256="0" * 64)
    base.update(kw)
    return EngineRecord(**base)


def test_engine_for_another_gpu_or_version_is_refused():
    check_engine_compatible(record(), ORIN, "10.3.0")
    with pytest.raises(BundleError, match="built for Orin"):
        check_engine_compatible(record(), GpuInfo("NVIDIA H100", "9.0"), "10.3.0")
    with pytest.raises(BundleError, match="TensorRT 10.3.0, this is TensorRT 10.7.0"):
        check_engine_compatible(record(), ORIN, "10.7.0")


# -- fake tensorrt modules with the real enums per version (tests/trt_fakes.py) -------------------
def fake_trt(version: str, precision_flags: bool = True):
    line = {"8.5.2": "8.5", "10.3.0": "10.3", "10.13.0": "10.13", "11.0.0": "11.0"}[version]
    return fake_tensorrt(line)


@pytest.fixture()
def bundle(tmp_path):
    with BundleWriter(tmp_path / "b") as w:
        w.write_spec(SPEC, GraphInfo(1, 64, "raw", SPEC.feature_size, 17), {})
        w.write_bytes("model.onnx", b"FP32-ONNX")
        w.write_bytes("model.int8.onnx", b"QDQ-ONNX")
        return w.commit()


def test_trt10_int8_uses_flags_and_the_qdq_graph(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    trt, calls = fake_trt("10.3.0", precision_flags=True)
    assert features(trt)["int8_flag"] and network_flags(trt, features(trt)) == 0
    rec = build_engine(bundle, "int8", min_batch=1, opt_batch=2, max_batch=4, workspace_mib=512,
                       trt=trt, gpu=ORIN)
    assert calls["parsed"] == b"QDQ-ONNX" and set(calls["flags"]) == {"FP16", "INT8"}
    assert calls["profile"] == ("image", ((1, 1, 64, 64), (2, 1, 64, 64), (4, 1, 64, 64)))
    assert calls["pool"] == (trt.MemoryPoolType.WORKSPACE, 512 << 20)
    assert rec.plan == "orin_trt10.3.0.30_int8_b1-2-4.plan" and rec.onnx_file == "model.int8.onnx"
    assert rec.extra["float_precision"] == "fp16"
    assert rec.onnx_sha256 == bundle.files["model.int8.onnx"]
    again = Bundle.open(bundle.root)  # checksums rewritten, engine listed and verified
    assert again.engines == [rec] and again.engine_path(rec).read_bytes() == b"PLAN-BYTES"
    assert (tmp_path / "cache" / "trt" / "orin_trt10.3.0.30.timing-cache").read_bytes() == b"CACHE"


def test_trt8_sets_explicit_batch(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    trt, calls = fake_trt("8.5.2", precision_flags=True)
    build_engine(bundle, "fp16", trt=trt, gpu=ORIN)
    assert calls["network_flags"] == 1 << 0 and calls["flags"] == ["FP16"]


def test_trt11_is_strongly_typed_without_precision_flags(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    trt, calls = fake_trt("11.0.0", precision_flags=False)
    rec = build_engine(bundle, "int8", trt=trt, gpu=ORIN)
    # 11.0: STRONGLY_TYPED (= 0 there) is deprecated and ignored; no bit is asked for.
    assert calls["network_flags"] == 0 and calls["flags"] == []
    assert rec.extra["strongly_typed"] is True
    # No FP16 flag on 11.x: an INT8 engine keeps the graph's fp32 float parts.
    assert rec.extra["float_precision"] == "fp32"


def test_trt10_without_precision_flags_asks_for_strongly_typed_by_its_value():
    from hamedge.trt.build import features

    trt, _ = fake_tensorrt("10.3")
    feats = dict(features(trt), fp16_flag=False)
    assert network_flags(trt, feats) == 1 << 1  # kSTRONGLY_TYPED = 1 on 10.x


def test_refusals(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    trt, _ = fake_trt("10.3.0", precision_flags=True)
    with pytest.raises(BackendUnavailable, match="DLA core 0 requested"):
        build_engine(bundle, "fp16", dla_core=0, trt=trt, gpu=ORIN)
    with pytest.raises(HamedgeError, match="unknown engine precision"):
        build_engine(bundle, "int4", trt=trt, gpu=ORIN)
    monkeypatch.setattr("hamedge.trt.build.gpu_info", lambda: None)
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        build_engine(bundle, "fp16", trt=trt)


def test_real_tensorrt_build(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine")
    torch = pytest.importorskip("torch")
    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.export import ExportOptions, export_bundle
    from hamedge.model.network import HAM
    from hamedge.runtime.tensorrt import gpu_info

    if gpu_info() is None:
        pytest.skip("no CUDA GPU: TensorRT builders need one")
    save_checkpoint(HAM(SPEC).eval(), SPEC, tmp_path / "m.safetensors")
    b = export_bundle(tmp_path / "m.safetensors", ExportOptions(out=tmp_path / "b"), log=print)
    rec = build_engine(b, "fp16", max_batch=2)
    assert Bundle.open(b.root).engines == [rec] and rec.gpu_name == gpu_info().name
    del torch
