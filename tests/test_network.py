"""The HAM network's structure and forward contract. Parity with the reference repository's own
code was checked by hand (bit-exact); these tests pin the reference's key layout and behaviour."""

import pytest
import torch

from hamedge.model.network import HAM, build_model, lse_pool
from hamedge.spec import ModelSpec


def small(arch="resnet18", **kw):
    return ModelSpec(arch=arch, input_size=kw.pop("input_size", 64), **kw)


def test_forward_shapes_and_ranges():
    spec = small(output_stride=16, class_names=("A", "B", "C"))
    model = build_model(spec).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.anomaly_logit.shape == (2, 1) and out.class_logits.shape == (2, 3)
    assert out.class_cams.shape == (2, 3, spec.feature_size, spec.feature_size)
    assert out.class_maps.shape == (2, 3, 64, 64) and out.anomaly_map.shape == (2, 1, 64, 64)
    assert float(out.class_maps.min()) >= 0.0 and float(out.class_maps.max()) <= 1.0
    assert float(out.class_cams.min()) >= 0.0  # ReLU CAMs
    assert model(torch.randn(1, 3, 64, 64), refine=False).class_maps is None


def test_reference_key_layout():
    keys = set(HAM(small()).state_dict())
    for key in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "fa_layer.conva.0.weight", "fa_layer.conva.1.weight", "fa_layer.fa.conv1.weight",
                "fa_layer.fa.channel_fc.0.weight", "fa_layer.fa.channel_fc.2.weight",
                "fa_layer.fa.conv4.weight", "fa_layer.fa.bn4.running_mean", "fa_layer.fa.gamma",
                "fa_layer.convb.1.num_batches_tracked", "cls_head.0.weight", "cls_head.1.weight",
                "anomaly_fc.weight", "cls_fc.weight"]:
        assert key in keys, key
    assert not any("maxpool" in k for k in keys)
    assert HAM(small()).fa_layer.fa.gamma.shape == (1,)


def test_dilated_stage_dilates_first_block_and_basic_block_second_conv_stays_plain():
    spec = small(output_stride=8, dilation=True)  # dilations (1, 1, 2, 4)
    model = HAM(spec)
    assert model.layer4[0].conv1.dilation == (4, 4) and model.layer4[0].conv1.padding == (4, 4)
    assert model.layer4[0].conv2.dilation == (1, 1)
    bottleneck = HAM(small("resnet50", output_stride=8, dilation=True))
    assert bottleneck.layer3[0].conv2.dilation == (2, 2)


def test_lse_pool_limits():
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    # Large r approaches max pooling, small r approaches mean pooling.
    assert torch.allclose(lse_pool(x, 1e4), x.flatten(2).amax(2), atol=1e-3)
    assert torch.allclose(lse_pool(x, 1e-4), x.flatten(2).mean(2), atol=1e-3)


def test_one_channel_spec_builds_a_one_channel_stem():
    spec = small(in_channels=1, mean=(0.5,), std=(0.5,))
    assert HAM(spec).conv1.weight.shape[1] == 1


@pytest.mark.parametrize("arch", ["resnet34", "resnet50", "resnext50_32x4d"])
def test_other_backbones_build(arch):
    model = HAM(small(arch, output_stride=32)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out.class_logits).all()


def test_random_model_is_seeded_and_not_degenerate():
    from hamedge.model.network import random_model

    spec = small(class_names=("A", "B"))
    a, b = random_model(spec, seed=3), random_model(spec, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert float(a.bn1.running_var.min()) >= 0.5 and not a.training


def test_graph_outputs_are_the_exported_graphs_three():
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))
    model = HAM(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    probs, anomaly, maps = out.graph_outputs()
    assert torch.equal(probs, torch.sigmoid(out.class_logits))
    assert torch.equal(anomaly, torch.sigmoid(out.anomaly_logit))
    assert maps.shape == (2, 3, 4, 4) and torch.equal(maps[:, :1], out.anomaly_cam)
    refined = out.graph_outputs(refined=True)[2]
    assert refined.shape == (2, 3, 64, 64) and torch.equal(refined[:, 1:], out.class_maps)
    with torch.no_grad():
        raw_only = model(torch.randn(1, 3, 64, 64), refine=False)
    with pytest.raises(ValueError, match="refine=False"):
        raw_only.graph_outputs(refined=True)
