"""Import of the HAM reference repository's .pth checkpoints and YAML configs, and the CLI."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from hamedge.cli.app import run_app
from hamedge.errors import CheckpointError, SpecError
from hamedge.model import checkpoint as ck
from hamedge.model import reference as ref
from hamedge.model.network import HAM
from hamedge.spec import NIH_CLASSES, ModelSpec

SPEC = ModelSpec(arch="resnet18", output_stride=8, dilation=True, input_size=64,
                 description="imported from the HAM reference (fold1.yaml)")

FOLD1 = """\
DataRoot: /PATH/TO/NIH_Chest_Xray14
Data_CLASSES: ['Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia']
GPUs: [0,1]
Means: [0.5, 0.5, 0.5] 
Stds: [0.5, 0.5, 0.5]
arch: resnet50
Downsampling: 8
Using_pooling: True
Using_dilation: True
Using_pretrained_weights: True
in_channels: 3
img_size: 512
batchsize: 24
Attention:
  resume: 
"""


@pytest.fixture(scope="module")
def model() -> HAM:
    torch.manual_seed(0)
    model = HAM(SPEC).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and gamma, so the test can fail
        for name, value in model.state_dict().items():
            if name.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "gamma")):
                value.copy_(torch.randn(value.shape, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module")
def ref_dir(model, tmp_path_factory):
    """Reference-style files, written the way the reference writes them (torch.save)."""
    d = tmp_path_factory.mktemp("ref")
    state = model.state_dict()
    torch.save(OrderedDict(("module.model." + k, v) for k, v in state.items()), d / "dp.pth")
    torch.save(OrderedDict(("model." + k, v) for k, v in state.items()), d / "single.pth")
    torch.save({"epoch": 3, "state_dict": {"model." + k: v for k, v in state.items()}},
               d / "wrapped.pth")
    (d / "fold1.yaml").write_text(FOLD1)
    return d


def outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", ["dp.pth", "single.pth", "wrapped.pth"])
def test_reference_files_load_with_identical_outputs(model, ref_dir, name):
    loaded = ref.load_reference_model(ref_dir / name, SPEC)
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(outputs(model, x), outputs(loaded, x)):
        assert torch.equal(a, b)


def test_bare_keys_are_accepted(model):
    assert set(ref.strip_prefixes(model.state_dict())) == set(model.state_dict())
    prefixed = {"module.model." + k: v for k, v in model.state_dict().items()}
    assert set(ref.strip_prefixes(prefixed)) == set(model.state_dict())


def test_pickled_objects_are_refused(model, tmp_path):
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state["optimizer_class"] = torch.optim.Adam  # a global: weights_only refuses it
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="pickled objects other than tensors") as info:
        ref.read_reference_state_dict(tmp_path / "evil.pth")
    assert "\n" not in str(info.value)


def test_non_state_dicts_and_garbage_are_refused(tmp_path):
    torch.save({"model.conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="not tensors"):
        ref.read_reference_state_dict(tmp_path / "mixed.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ref.read_reference_state_dict(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        ref.read_reference_state_dict(tmp_path / "absent.pth")


def test_architecture_mismatch_is_explained(ref_dir):
    with pytest.raises(CheckpointError, match="holds a resnet18 with 14 classes.*expects a resnet50"):
        ref.load_reference_state_dict(ref_dir / "dp.pth", SPEC.replace(arch="resnet50"))
    with pytest.raises(CheckpointError, match="14 classes.*expects a resnet18 with 3 classes"):
        ref.load_reference_state_dict(ref_dir / "dp.pth",
                                      SPEC.replace(class_names=("a", "b", "c")))
    # max-pool off at stride 32 adds a downsample branch to layer1: keys no longer fit
    with pytest.raises(CheckpointError, match="missing key"):
        ref.load_reference_state_dict(ref_dir / "dp.pth",
                                      SPEC.replace(keep_maxpool=False, output_stride=32))


def test_spec_from_fold1_config(ref_dir):
    spec = ref.spec_from_reference_config(ref_dir / "fold1.yaml")
    assert (spec.arch, spec.output_stride, spec.keep_maxpool, spec.dilation, spec.input_size) == \
        ("resnet50", 8, True, True, 512)
    assert spec.class_names == NIH_CLASSES and spec.mean == (0.5,) * 3 and spec.std == (0.5,) * 3
    assert spec.feature_size == 64
    over = ref.spec_from_reference_config(ref_dir / "fold1.yaml", arch="resnet18", input_size=64,
                                          dilation=None, class_names=("A", "B"))
    assert (over.arch, over.input_size, over.dilation, over.class_names) == \
        ("resnet18", 64, True, ("A", "B"))


def test_spec_from_overrides_alone_and_missing_keys():
    spec = ref.spec_from_reference_config(None, arch="resnet34", output_stride=16,
                                          keep_maxpool=False, dilation=True, input_size=128,
                                          class_names=("x",))
    assert spec.stage_dilations == (1, 1, 2, 4)
    with pytest.raises(SpecError, match=r"missing Downsampling \(--output-stride\)"):
        ref.spec_from_reference_config(None, arch="resnet18", keep_maxpool=True, dilation=False,
                                       input_size=64, class_names=("x",))


@pytest.mark.parametrize("text, message", [
    (FOLD1.replace("Downsampling: 8", "Downsampling: eight"), "Downsampling must be an integer"),
    (FOLD1.replace("Using_pooling: True", "Using_pooling: 1"), "Using_pooling must be true or false"),
    (FOLD1.replace("Downsampling: 8", "Downsampling: 4"), "output stride must be 8, 16 or 32"),
    (FOLD1.replace("arch: resnet50", "arch: vgg16"), "unknown architecture 'vgg16'"),
    (FOLD1.replace("img_size: 512\n", ""), r"missing img_size \(--img-size\)"),
    (FOLD1.replace("Means: [0.5, 0.5, 0.5]", "Means: [0.5]"), "mean and std need 3 values"),
    ("arch: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "not a reference config"),
])
def test_bad_configs_give_one_line(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as info:
        ref.spec_from_reference_config(path)
    assert "\n" not in str(info.value)


def test_convert_reference_writes_a_verified_checkpoint(model, ref_dir, tmp_path):
    out = ref.convert_reference(ref_dir / "dp.pth", SPEC, tmp_path / "m.safetensors")
    spec, state, meta = ck.load_checkpoint(out)
    assert spec == SPEC
    assert meta["source_file"] == "dp.pth" and len(meta["source_sha256"]) == 64
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value)
    with pytest.raises(CheckpointError, match="already exists"):
        ref.convert_reference(ref_dir / "dp.pth", SPEC, out)


def test_load_reference_model_with_its_spec(model, ref_dir):
    a = ref.load_reference_model(ref_dir / "single.pth", SPEC)
    assert torch.equal(a.conv1.weight, model.conv1.weight)
    with pytest.raises(CheckpointError, match="expects a resnet50"):
        ref.load_reference_model(ref_dir / "single.pth", SPEC.replace(arch="resnet50"))


def test_conversion_is_verified_and_a_failing_file_removed(model, ref_dir, tmp_path, monkeypatch):
    from hamedge.model import checkpoint as ckpt_module

    out = tmp_path / "m.safetensors"
    real_save = ckpt_module.save_checkpoint

    def corrupting_save(state, spec, path, **kw):  # a writer that changes one tensor
        state = dict(state)
        state["conv1.weight"] = state["conv1.weight"] + 1e-3
        return real_save(state, spec, path, **kw)

    monkeypatch.setattr(ref, "save_checkpoint", corrupting_save)
    with pytest.raises(CheckpointError, match="tensor conv1.weight changed in conversion"):
        ref.convert_reference(ref_dir / "dp.pth", SPEC, out)
    assert not out.exists()
    ref.convert_reference(ref_dir / "dp.pth", SPEC, out, verify=False)  # the check is what caught it
    assert out.exists()


def test_checkpoint_info_describes_and_verifies(model, ref_dir, tmp_path):
    out = ref.convert_reference(ref_dir / "dp.pth", SPEC, tmp_path / "m.safetensors", half=True)
    info = ck.checkpoint_info(out)
    assert info.spec == SPEC and info.arch == "resnet18" and info.dtypes == ("F16", "F32", "I64")
    assert info.file_sha256 == ck.checkpoint_sha256(out) and len(info.weights_sha256) == 64
    assert info.tensors == len(model.state_dict()) and info.size_bytes == out.stat().st_size
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.metadata["source_file"] == "dp.pth"
    data = bytearray(out.read_bytes())
    data[-10] ^= 0xFF  # flip a weight byte: the hash check must refuse it
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="weights hash mismatch"):
        ck.checkpoint_info(out)


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_import_reference_and_inspect(model, ref_dir, tmp_path, capsys):
    out = tmp_path / "imported.safetensors"
    args = ["import-reference", str(ref_dir / "dp.pth"), "--config", str(ref_dir / "fold1.yaml"),
            "--arch", "resnet18", "--img-size", "64", "--out", str(out)]
    assert run_app(args) == 0
    line = capsys.readouterr().out.strip()
    assert "resnet18, stride 8, dilated, 64 px, 14 classes" in line and "sha256" in line
    loaded = ck.load_model(out)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(outputs(model, x), outputs(loaded, x)):
        assert torch.equal(a, b)

    # refuses to overwrite without --force: one line on stderr, non-zero exit
    assert run_app(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1

    assert run_app(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(verified)" in text and "resnet18, stride 8" in text and ck.checkpoint_sha256(out) in text


@pytest.mark.parametrize("extra, message", [
    ([], "holds a resnet18 with 14 classes and 3 input channels, but the spec expects a resnet50"),
    (["--arch", "resnet18", "--classes", "A,B"], "expects a resnet18 with 2 classes"),
])
def test_cli_import_reference_errors(ref_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "x.safetensors"
    code = run_app(["import-reference", str(ref_dir / "dp.pth"), "--config",
                    str(ref_dir / "fold1.yaml"), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_inspect_refuses_a_pth(ref_dir, capsys):
    assert run_app(["inspect", str(ref_dir / "dp.pth")]) == 2
    assert "import-reference" in capsys.readouterr().err
