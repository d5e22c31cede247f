"""Bundle layout, checksum verification and the all-or-nothing writer (no torch, no ONNX needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hamedge.bundle import (Bundle, BundleWriter, EngineRecord, GraphInfo, format_checksums,
                            parse_checksums)
from hamedge.errors import BundleError
from hamedge.spec import ModelSpec

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B", "C"))
GRAPH = GraphInfo(input_channels=1, input_size=64, heatmaps="raw", feature_size=SPEC.feature_size,
                  opset=17)


def make_bundle(target: Path, int8: bool = True, cpu_graph: bool = True, calib_key: str = "ab" * 32,
                **kw) -> Bundle:
    with BundleWriter(target, **kw) as w:
        w.write_spec(SPEC, GRAPH, {"checkpoint_sha256": "ab" * 32})
        w.write_bytes("model.onnx", b"fp32 graph")
        if int8:
            w.write_bytes("model.int8.onnx", b"s8s8 graph")
            w.write_json("calibration.json", {"method": "max", "count": 3,
                                              "checkpoint_sha256": calib_key})
        if cpu_graph:
            w.write_bytes("model.int8.cpu.onnx", b"u8s8 graph")
        w.write_bytes("weights.safetensors", b"weights")
        return w.commit()


def test_roundtrip_reads_everything(tmp_path):
    b = make_bundle(tmp_path / "m.hamedge")
    again = Bundle.open(tmp_path / "m.hamedge")
    assert again.spec == SPEC
    assert again.graph == GRAPH
    assert again.graph.heatmap_size == SPEC.feature_size and again.graph.folded
    assert again.provenance["checkpoint_sha256"] == "ab" * 32
    assert again.calibration == {"method": "max", "count": 3, "checkpoint_sha256": "ab" * 32}
    assert again.weights_path == tmp_path / "m.hamedge" / "weights.safetensors"
    assert again.engines == []
    assert b.precisions == ("fp32", "fp16", "bf16", "int8")
    lines = (tmp_path / "m.hamedge" / "checksums").read_text().splitlines()
    assert all(len(line.split("  ")[0]) == 64 for line in lines)
    assert {line.split("  ")[1] for line in lines} == {
        "spec.json", "model.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "calibration.json",
        "weights.safetensors"}
    # nothing temporary left beside the bundle
    assert [p.name for p in tmp_path.iterdir()] == ["m.hamedge"]


def test_path_for_picks_the_right_graph(tmp_path):
    b = make_bundle(tmp_path / "b")
    assert b.path_for("fp32", "cpu").name == "model.onnx"
    assert b.path_for("fp16", "tensorrt").name == "model.onnx"
    assert b.path_for("int8", "tensorrt").name == "model.int8.onnx"
    assert b.path_for("int8", "cpu").name == "model.int8.cpu.onnx"
    with pytest.raises(BundleError, match="unknown precision"):
        b.path_for("int4")
    only_sym = make_bundle(tmp_path / "c", cpu_graph=False)
    assert only_sym.path_for("int8", "cpu").name == "model.int8.onnx"  # correct fallback
    fp32_only = make_bundle(tmp_path / "d", int8=False, cpu_graph=False)
    assert fp32_only.calibration is None
    with pytest.raises(BundleError, match="--int8"):
        fp32_only.path_for("int8", "tensorrt")


def test_tampered_file_is_refused(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "model.int8.onnx").write_bytes(b"evil graph")
    with pytest.raises(BundleError, match="checksum mismatch for model.int8.onnx"):
        Bundle.open(tmp_path / "b")
    Bundle.open(tmp_path / "b", verify=False)  # presence-only check still opens


def test_missing_file_and_missing_checksums_are_refused(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        Bundle.open(tmp_path / "b")
    (tmp_path / "b" / "checksums").unlink()
    with pytest.raises(BundleError, match="not a hamedge bundle"):
        Bundle.open(tmp_path / "b")
    with pytest.raises(BundleError, match="no bundle"):
        Bundle.open(tmp_path / "nope")


def test_checksums_cannot_escape_the_bundle():
    with pytest.raises(BundleError, match="outside"):
        parse_checksums("0" * 64 + "  ../etc/passwd\n")
    with pytest.raises(BundleError, match="line 1"):
        parse_checksums("deadbeef  spec.json\n")
    entries = {"b": "1" * 64, "a": "2" * 64}
    assert parse_checksums(format_checksums(entries)) == entries


def test_wrong_format_is_refused(tmp_path):
    make_bundle(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "spec.json").read_text())
    meta["format"] = "hamedge-bundle/99"
    (tmp_path / "b" / "spec.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unsupported bundle format"):
        Bundle.open(tmp_path / "b", verify=False)


def test_writer_refuses_existing_target_and_force_replaces(tmp_path):
    make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        BundleWriter(tmp_path / "b")
    b = make_bundle(tmp_path / "b", int8=False, cpu_graph=False, force=True)
    assert b.precisions == ("fp32", "fp16", "bf16")
    assert not (tmp_path / "b" / "model.int8.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_failed_export_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with BundleWriter(tmp_path / "b") as w:
            w.write_bytes("model.onnx", b"x")
            raise RuntimeError("exporter crashed")
    assert list(tmp_path.iterdir()) == []


def orin_record(b: Bundle) -> EngineRecord:
    return EngineRecord(plan="nvidia-orin_trt10.3.0_fp16_b1-4-8.plan", gpu_name="Orin",
                        compute_capability="8.7", trt_version="10.3.0", precision="fp16",
                        min_batch=1, opt_batch=4, max_batch=8, onnx_file="model.onnx",
                        onnx_sha256=b.files["model.onnx"])


def test_engines_added_later_are_listed_and_verified(tmp_path):
    b = make_bundle(tmp_path / "b")
    rec = orin_record(b)
    b.add_engine(b"PLAN", rec)
    again = Bundle.open(tmp_path / "b")
    assert again.engines == [rec]
    assert again.engine_path(rec).read_bytes() == b"PLAN"
    (tmp_path / "b" / "engines" / rec.plan).write_bytes(b"PLAN2")
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.open(tmp_path / "b")
    # an unlisted plan dropped into engines/ is ignored, not trusted
    c = make_bundle(tmp_path / "c")
    (c.root / "engines").mkdir()
    (c.root / "engines" / "x.json").write_text(json.dumps(rec.to_dict()))
    assert Bundle.open(c.root).engines == []


def test_stale_calibration_is_refused(tmp_path):
    with pytest.raises(BundleError, match="stale calibration"):
        make_bundle(tmp_path / "b", calib_key="cd" * 32)
    assert list(tmp_path.iterdir()) == []  # refused before the rename: nothing left behind


def test_rebuilding_an_engine_never_leaves_an_unopenable_bundle(tmp_path, monkeypatch):
    import hamedge.bundle as bundle_mod

    b = make_bundle(tmp_path / "b")
    rec = orin_record(b)
    b.add_engine(b"PLAN", rec)

    def killed(*args, **kwargs):  # the process dies while writing the new plan
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_mod, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        Bundle.open(tmp_path / "b").add_engine(b"PLAN2", rec)
    monkeypatch.undo()
    survivor = Bundle.open(tmp_path / "b")  # opens: the old engine is simply no longer listed
    assert survivor.engines == []
    survivor.add_engine(b"PLAN2", rec)
    assert Bundle.open(tmp_path / "b").engine_path(rec).read_bytes() == b"PLAN2"
