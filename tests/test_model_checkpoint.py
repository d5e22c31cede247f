"""hamedge's own checkpoint format: round trip, fp16 storage, verification, strict architecture."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from hamedge.errors import CheckpointError
from hamedge.model import checkpoint as ck
from hamedge.model.network import HAM
from hamedge.spec import ModelSpec

SPEC = ModelSpec(arch="resnet18", input_size=64)


def calibrated_model(spec: ModelSpec, seed: int = 0) -> HAM:
    """A HAM whose activations are in a trained model's range: BatchNorm statistics measured on
    random inputs, small classifier weights, a non-zero attention gamma. (Freshly initialised
    weights give logits around 1e8, where no precision comparison means anything.)"""
    torch.manual_seed(seed)
    model = HAM(spec)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, spec.in_channels, spec.input_size, spec.input_size), refine=False)
        torch.nn.init.normal_(model.cls_fc.weight, std=0.05)
        torch.nn.init.normal_(model.anomaly_fc.weight, std=0.05)
        model.fa_layer.fa.gamma.fill_(0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> HAM:
    return calibrated_model(SPEC)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("ck") / "model.safetensors"
    ck.save_checkpoint(model, SPEC, path, metadata={"trained_on": "nothing"})
    return path


def outputs(model: HAM, x: torch.Tensor):
    with torch.no_grad():
        return model(x)


def test_round_trip_gives_identical_outputs(model, saved):
    loaded = ck.load_model(saved)
    assert not loaded.training
    assert loaded.spec == SPEC
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(outputs(model, x), outputs(loaded, x)):
        assert torch.equal(a, b)


def test_load_checkpoint_returns_spec_float32_state_and_metadata(model, saved):
    spec, state, meta = ck.load_checkpoint(saved)
    assert spec == SPEC
    assert meta == {"trained_on": "nothing"}
    assert set(state) == set(model.state_dict())
    assert state["bn1.num_batches_tracked"].dtype == torch.int64
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_file_is_safetensors_with_documented_metadata(saved):
    raw = saved.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8:8 + length])["__metadata__"]
    assert meta["hamedge.format"] == "hamedge-checkpoint/1"
    assert ModelSpec.from_json(meta["hamedge.spec"]) == SPEC
    assert len(meta["hamedge.weights_sha256"]) == 64


def test_half_storage_is_smaller_loads_as_float32_and_stays_close(model, tmp_path):
    path = ck.save_checkpoint(model, SPEC, tmp_path / "half.safetensors", half=True)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert header["conv1.weight"]["dtype"] == "F16"
    assert header["bn1.running_var"]["dtype"] == "F32"  # BatchNorm statistics kept in fp32
    assert header["bn1.num_batches_tracked"]["dtype"] == "I64"
    full_size = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert path.stat().st_size < 0.55 * full_size
    loaded = ck.load_model(path)
    assert loaded.conv1.weight.dtype == torch.float32
    x = torch.randn(2, 3, 64, 64)
    a, b = outputs(model, x), outputs(loaded, x)
    # fp16 weights: probabilities move by a few 1e-3 at most on this calibrated model
    assert float((a.class_logits.sigmoid() - b.class_logits.sigmoid()).abs().max()) < 2e-2
    assert float((a.anomaly_logit.sigmoid() - b.anomaly_logit.sigmoid()).abs().max()) < 2e-2


def test_tampered_weights_are_detected(saved, tmp_path):
    raw = bytearray(saved.read_bytes())
    raw[-100] ^= 0xFF  # flip a byte inside the tensor data
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        ck.load_checkpoint(bad)


def test_truncated_file_is_refused(saved, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ck.load_model(bad)


def test_pth_and_garbage_files_are_refused_with_one_line(tmp_path):
    pth = tmp_path / "model.safetensors"
    torch.save({"conv1.weight": torch.zeros(1)}, pth)
    with pytest.raises(CheckpointError, match="import-reference") as info:
        ck.load_checkpoint(pth)
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "absent.safetensors")


def test_plain_safetensors_without_hamedge_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no hamedge metadata"):
        ck.load_checkpoint(path)


def test_wrong_architecture_is_refused_on_save_and_load(model, saved, tmp_path):
    other = SPEC.replace(arch="resnet34")
    with pytest.raises(CheckpointError, match="resnet18 .*but the spec expects a resnet34"):
        ck.save_checkpoint(model, other, tmp_path / "x.safetensors")
    fewer = SPEC.replace(class_names=SPEC.class_names[:5])
    with pytest.raises(CheckpointError, match="14 classes.*5 classes"):
        ck.save_checkpoint(model, fewer, tmp_path / "y.safetensors")
    with pytest.raises(CheckpointError, match="resnet18 .*resnet50"):
        ck.load_model(saved, expect=SPEC.replace(arch="resnet50"))
    # same weights layout, different spec details: fine
    ck.load_model(saved, expect=SPEC.replace(cam_threshold=0.99))


def test_missing_and_unexpected_keys_are_named(model, tmp_path):
    state = dict(model.state_dict())
    state.pop("fa_layer.fa.gamma")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\) \(fa_layer.fa.gamma\).*"
                                              r"1 unexpected key\(s\) \(extra.weight\)"):
        ck.check_state_dict(state, SPEC, source="s.pth")
    state = dict(model.state_dict())
    state["cls_head.0.weight"] = torch.zeros(512, 3, 3, 3)
    with pytest.raises(CheckpointError, match="cls_head.0.weight has shape"):
        ck.check_state_dict(state, SPEC, source="s.pth")


def test_infer_architecture_names_every_backbone():
    for arch in ("resnet18", "resnet34", "resnet50", "resnext50_32x4d", "resnext101_32x8d"):
        spec = ModelSpec(arch=arch, class_names=("a", "b"), in_channels=1, mean=(0.5,), std=(0.5,))
        with torch.device("meta"):
            state = HAM(spec).state_dict()
        found = ck.infer_architecture(state)
        assert (found["arch"], found["num_classes"], found["in_channels"]) == (arch, 2, 1)


def test_hash_depends_on_names_dtypes_shapes_and_bytes():
    base = {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    h = ck.weights_sha256(base)
    assert h == ck.weights_sha256(dict(reversed(list(base.items()))))  # order-independent
    assert h != ck.weights_sha256({"a": torch.zeros(3, 2), "b": base["b"]})
    assert h != ck.weights_sha256({"a": torch.zeros(2, 3, dtype=torch.float64), "b": base["b"]})
    assert h != ck.weights_sha256({"c": torch.zeros(2, 3), "b": base["b"]})
    changed = base["a"].clone()
    changed[1, 2] = 1e-30
    assert h != ck.weights_sha256({"a": changed, "b": base["b"]})


def test_reserved_metadata_keys_are_refused(model, tmp_path):
    with pytest.raises(CheckpointError, match="reserved"):
        ck.save_checkpoint(model, SPEC, tmp_path / "m.safetensors", metadata={"hamedge.spec": "x"})


def test_save_is_atomic_and_leaves_no_temporaries(model, saved):
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_checkpoint_sha256_and_resolve(saved, tmp_path, monkeypatch):
    import hashlib

    assert ck.checkpoint_sha256(saved) == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert ck.resolve_checkpoint(saved) == saved
    with pytest.raises(CheckpointError, match="not found"):
        ck.resolve_checkpoint(tmp_path / "nope.safetensors")
    monkeypatch.setattr(ck, "DEFAULT_MODEL", tmp_path / "default_model.safetensors")
    with pytest.raises(CheckpointError, match="packaged demo model"):
        ck.resolve_checkpoint(None)
    monkeypatch.setattr(ck, "DEFAULT_MODEL", saved)
    assert ck.resolve_checkpoint(None) == saved


def test_forward_on_real_xray_is_finite_and_maps_in_unit_interval(model, nih_images):
    from PIL import Image
    import numpy as np

    image = Image.open(nih_images[0]).convert("RGB").resize((64, 64), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - 0.5) / 0.5
    out = outputs(model, x)
    for t in out:
        assert torch.isfinite(t).all()
    for maps in (out.anomaly_map, out.class_maps):
        assert maps.shape[-2:] == (64, 64)
        # sigmoid(100 * 0.6) rounds to exactly 1.0 in float32, so the top is closed
        assert float(maps.min()) > 0.0 and float(maps.max()) <= 1.0
    assert (out.class_cams >= 0).all()


def test_weights_hash_is_defined_by_the_file_bytes_alone(saved):
    """The documented definition, recomputed from the raw safetensors file without torch: any
    tool can verify a checkpoint (e.g. a bundle's weights) from its bytes."""
    import hashlib

    raw = saved.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    meta = header.pop("__metadata__")
    data = raw[8 + length:]
    digest = hashlib.sha256()
    for name in sorted(header):
        entry = header[name]
        head = json.dumps([name, entry["dtype"], entry["shape"]]).encode()
        start, end = entry["data_offsets"]
        digest.update(len(head).to_bytes(8, "little") + head)
        digest.update((end - start).to_bytes(8, "little") + data[start:end])
    assert digest.hexdigest() == meta["hamedge.weights_sha256"]
